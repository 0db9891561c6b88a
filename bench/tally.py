"""Collect what every request of one load-generator run did, and the samples inside its window."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .reading import Outcome, Window

# Error descriptions kept verbatim in the results, to show what went wrong without flooding them.
EXAMPLES_KEPT = 5


@dataclass
class Tally:
    """Counts of all requests (warm-up included: any error fails the run) and the window's samples."""

    window: Window
    sent: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    completed_in_window: int = 0
    ttft_ms: list[float] = field(default_factory=list)
    max_gap_ms: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0
    # Streams whose response has started and not ended: what the server is holding open.
    live: int = 0
    peak_live: int = 0
    # (request id, time.time() when the client closed its connection), for the disconnect workload.
    left: list[tuple[str, float]] = field(default_factory=list)
    # Request id -> time.time() when the client sent it, to compare with when the upstream saw it.
    sent_wall: dict[str, float] = field(default_factory=dict)

    def started(self) -> None:
        """A request is about to be sent."""
        self.sent += 1
        self.in_flight += 1
        if self.in_flight > self.peak_in_flight:
            self.peak_in_flight = self.in_flight

    def opened(self, outcome: Outcome) -> None:
        """A stream's response started."""
        outcome.opened = True
        self.live += 1
        if self.live > self.peak_live:
            self.peak_live = self.live

    def ended(self, outcome: Outcome, *, expected_chunks: int | None) -> None:
        """A request ended; its samples count when it was sent inside the window."""
        self.in_flight -= 1
        if outcome.opened:
            self.live -= 1
        if outcome.error is None and expected_chunks is not None and outcome.chunks != expected_chunks:
            outcome.error = f"chunks_{outcome.chunks}_of_{expected_chunks}"
        if outcome.error is not None:
            self.failed(outcome.error)
            return
        self.ok += 1
        window = self.window
        if outcome.ended_at is not None and window.holds(outcome.ended_at):
            self.completed_in_window += 1
        if not window.holds(outcome.sent_at):
            return
        if outcome.ttft is not None:
            self.ttft_ms.append(outcome.ttft * 1000)
            self.max_gap_ms.append(outcome.max_gap * 1000)
        if outcome.ended_at is not None:
            self.latency_ms.append((outcome.ended_at - outcome.sent_at) * 1000)

    def failed(self, description: str) -> None:
        """Count one failed request by the kind of its failure."""
        kind = description.split(":", 1)[0]
        self.errors[kind] += 1
        if len(self.examples) < EXAMPLES_KEPT:
            self.examples.append(description[:300])

    def to_json(self) -> dict[str, Any]:
        """The counts and samples as a JSON object."""
        return {
            "sent": self.sent,
            "ok": self.ok,
            "errors": dict(self.errors),
            "error_examples": self.examples,
            "completed_in_window": self.completed_in_window,
            "chunks_in_window": self.window.chunks,
            "ttft_ms": [round(v, 4) for v in self.ttft_ms],
            "max_gap_ms": [round(v, 3) for v in self.max_gap_ms],
            "latency_ms": [round(v, 4) for v in self.latency_ms],
            "peak_in_flight": self.peak_in_flight,
            "peak_live": self.peak_live,
        }
