"""Read an upstream's SSE body into chat-completion chunks, keeping each chunk's bytes as received."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

DONE = b"[DONE]"


@dataclass(slots=True)
class Chunk:
    """One upstream event: its payload bytes as received and what the relay needs from them."""

    raw: bytes
    content: str | None = None
    has_delta: bool = False
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    done: bool = False


class MalformedChunk(ValueError):
    """An upstream event whose data is not a JSON object."""


class EventSplitter:
    """Split an SSE byte stream into the data of each event, as network reads deliver it.

    Comments and `event:`, `id:`, `retry:` fields are dropped. Line endings may be `\n`, `\r\n`
    or `\r`, also split across reads. Works on whole reads, so one read holding several events
    costs one call, not one per line.
    """

    __slots__ = ("_buffer", "_pending_cr")

    def __init__(self) -> None:
        self._buffer = b""
        self._pending_cr = False

    def feed(self, piece: bytes) -> list[bytes]:
        """The data of every event completed by `piece`."""
        if self._pending_cr:
            piece = b"\r" + piece
            self._pending_cr = False
        if b"\r" in piece:
            if piece.endswith(b"\r"):
                # Maybe the first half of a \r\n: decide when the next read shows.
                piece = piece[:-1]
                self._pending_cr = True
            piece = piece.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer = self._buffer + piece if self._buffer else piece
        found: list[bytes] = []
        start = 0
        while True:
            end = buffer.find(b"\n\n", start)
            if end < 0:
                break
            data = _event_data(buffer[start:end])
            if data is not None:
                found.append(data)
            start = end + 2
        self._buffer = buffer[start:]
        return found

    def close(self) -> list[bytes]:
        """The data of a last event the body ended without closing."""
        rest, self._buffer = self._buffer, b""
        data = _event_data(rest.rstrip(b"\n")) if rest.strip() else None
        return [data] if data is not None else []


def _event_data(event: bytes) -> bytes | None:
    if event.startswith(b"data: ") and b"\n" not in event:
        return event[6:]  # the usual case: one data line
    lines = [line for line in event.split(b"\n") if line.startswith(b"data:")]
    if not lines:
        return None
    return b"\n".join(line[6:] if line.startswith(b"data: ") else line[5:] for line in lines)


def parse_chunk(raw: bytes) -> Chunk:
    """Interpret one event's data; raise MalformedChunk when it is not a JSON object."""
    if raw == DONE:
        return Chunk(raw, done=True)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedChunk(str(exc)) from None
    if not isinstance(body, dict):
        raise MalformedChunk("chunk is not a JSON object")
    # Runs for every chunk: locals first, one Chunk built at the end (measured ~2x faster).
    error = body.get("error")
    if isinstance(error, dict):
        return Chunk(raw, error=error)
    usage = body.get("usage")
    if usage is not None and not isinstance(usage, dict):
        usage = None
    content: str | None = None
    has_delta = False
    finish_reason: str | None = None
    choices = body.get("choices")
    if choices and isinstance(choices, list):
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            if delta and isinstance(delta, dict):
                text = delta.get("content")
                if text and isinstance(text, str):
                    content = text if content is None else content + text
                    has_delta = True
                elif delta.get("tool_calls") or delta.get("refusal") or delta.get("function_call"):
                    has_delta = True
            reason = choice.get("finish_reason")
            if reason is not None and isinstance(reason, str):
                finish_reason = reason
    return Chunk(raw, content, has_delta, finish_reason, usage)
