"""Scan a stream's bytes as cheaply as possible: count content chunks, time the first and the gaps.

A stream is never parsed event by event: each read is searched with `bytes.count`/`bytes.find`
up to its last complete event (`\\n\\n`), and only the bytes after that wait for the next read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .config import Api


@dataclass(frozen=True, slots=True)
class Markers:
    """Byte patterns that identify a content chunk, the final event, a failure event and a reply."""

    content: bytes
    done: bytes
    failed: bytes
    reply: bytes  # present in a non-streaming reply


MARKERS = {
    # The simulator's content chunks; its role chunk is `"delta":{"role":...` and does not match.
    Api.OPENAI: Markers(b'"delta":{"content":', b"data: [DONE]", b'data: {"error"', b'"choices"'),
    Api.NATIVE: Markers(b"event: token", b"event: done", b"event: failed", b'"response"'),
}


class Window:
    """The measurement window on `time.perf_counter()`; chunks count only inside it."""

    __slots__ = ("chunks", "end", "start")

    def __init__(self, start: float, end: float) -> None:
        self.start = start
        self.end = end
        self.chunks = 0

    def holds(self, at: float) -> bool:
        """True while `at` lies inside the window."""
        return self.start <= at < self.end


@dataclass(slots=True)
class Outcome:
    """What the client saw of one request."""

    sent_at: float
    error: str | None = None
    first_at: float | None = None
    ended_at: float | None = None
    max_gap: float = 0.0
    chunks: int = 0
    opened: bool = False  # the response started

    @property
    def ttft(self) -> float | None:
        """Seconds from sending the request to the first content chunk."""
        return None if self.first_at is None else self.first_at - self.sent_at


class StreamScan:
    """Scan one SSE body (still chunk-framed) into an Outcome and the window's chunk count."""

    __slots__ = ("_last", "_markers", "_on_open", "_pending", "_window", "done", "failed", "outcome")

    def __init__(self, markers: Markers, outcome: Outcome, window: Window, on_open: Callable[[Outcome], None]) -> None:
        self._markers = markers
        self._window = window
        self._on_open = on_open
        self._pending = b""
        self._last: float | None = None
        self.outcome = outcome
        self.done = False
        self.failed = False

    def head(self) -> None:
        """The response started (status 200 and headers received)."""
        self._on_open(self.outcome)

    def feed(self, data: bytes, now: float) -> None:
        """Note the bytes of one read, received at `now` (perf_counter)."""
        if self._pending:
            data = self._pending + data
        cut = data.rfind(b"\n\n")
        if cut < 0:
            self._pending = data
            return
        self._pending = data[cut + 2 :]
        markers = self._markers
        found = data.count(markers.content, 0, cut)
        if found:
            outcome = self.outcome
            last = self._last
            if last is None:
                outcome.first_at = now
            elif now - last > outcome.max_gap:
                outcome.max_gap = now - last
            self._last = now
            outcome.chunks += found
            window = self._window
            if window.start <= now < window.end:
                window.chunks += found
        if data.find(markers.done, 0, cut) >= 0:
            self.done = True
        if data.find(markers.failed, 0, cut) >= 0:
            self.failed = True

    def verdict(self) -> str | None:
        """After the body ended: None when it closed with the final event and no failure event."""
        if self.failed:
            return "failure_event"
        if not self.done:
            return "no_final_event"
        return None
