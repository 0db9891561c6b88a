"""The bounds of detached browser streams."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BrowserStreamSettings:
    """How long and how much a detached stream is kept, and how long it runs unread.

    retention_seconds: a finished stream stays readable (for resume) this long.
    reader_grace_seconds: with no reader attached this long, the generation is stopped.
    max_buffered_events: events kept per stream; older ones are dropped beyond this.
    max_streams: streams kept at once, live and retained; finished ones make room first.
    max_buffered_bytes: bytes kept per stream; with this many unread, the upstream is held back.
    """

    retention_seconds: float = 300.0
    reader_grace_seconds: float = 30.0
    max_buffered_events: int = 10_000
    max_streams: int = 10_000
    max_buffered_bytes: int = 4 << 20

    def __post_init__(self) -> None:
        if self.retention_seconds < 0 or self.reader_grace_seconds < 0:
            raise ValueError("retention_seconds and reader_grace_seconds must not be negative")
        if self.max_buffered_events < 1 or self.max_streams < 1:
            raise ValueError("max_buffered_events and max_streams must be at least 1")
