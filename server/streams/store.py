"""Where a detached stream's events are kept between the generation that writes them and its readers.

The interface is small on purpose, so a shared store (Redis) can stand in for the in-process one:
create a stream, append its events in order, finish it (it then expires after the retention
time), read the events after a sequence number, and wait for more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One encoded SSE event (its `id:` line included) and its sequence number in the stream."""

    seq: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Slice:
    """Events after a sequence number, in order, and whether the stream has ended after them.

    `finished` is true only when these events reach the end of a finished stream: nothing will
    follow the last of them.
    """

    events: tuple[StoredEvent, ...]
    finished: bool


class EventsDroppedError(LookupError):
    """The events right after the requested one were dropped to keep the buffer bounded."""


class StoreUnavailableError(ConnectionError):
    """The shared store (Redis) cannot be reached now; what needs it answers 503 meanwhile."""


class GenerationLostError(LookupError):
    """The instance producing the stream stopped renewing its lease: no more events will come."""


class StreamStore(Protocol):
    """Bounded, expiring event buffers, one per detached stream."""

    async def create(self, stream_id: str, owner: str = "") -> bool:
        """Start an empty stream owned by `owner`; False when full (or `owner` holds its share of the bytes).

        `owner` is what `TokenSigner.stream_owner` gives for the key that started it (its name and
        a keyed fingerprint of its hash, never the key or its hash), "" without keys. A store that
        bounds the bytes it keeps shares them between owners, each live stream counting room for
        one upstream read besides its events (see memory.py).
        """

    async def owner(self, stream_id: str) -> str | None:
        """The stream's `owner` as created ("" for none); None when it is unknown."""

    async def append(self, stream_id: str, event: StoredEvent) -> None:
        """Add the next event; its `seq` is one more than the last one's (the first is 1)."""

    async def finish(self, stream_id: str) -> None:
        """Mark the stream ended: no event follows; it expires after the retention time."""

    async def read_after(self, stream_id: str, seq: int, limit: int) -> Slice | None:
        """At most `limit` events after `seq`; None when the stream is unknown or expired.

        Raises EventsDroppedError when events after `seq` are no longer held, and
        StoreUnavailableError when a shared store cannot be reached.
        """

    async def peek(self, stream_id: str, seq: int) -> Slice | None:
        """What `read_after(stream_id, seq, 1)` answers, without being a read (a HEAD request).

        A shared store does not count it as a reader: the producer's grace period and hold-back
        do not see it. Raises as `read_after` does.
        """

    async def wait(self, stream_id: str, seq: int) -> None:
        """Return once an event after `seq` exists, the stream has finished, or it is gone.

        It may also return with nothing new (read again). Raises GenerationLostError when the
        stream's producer is gone, and StoreUnavailableError when a shared store cannot be reached.
        """

    @property
    def kept_bytes(self) -> int:
        """Bytes of events this instance keeps now, across its streams (what `max_kept_bytes` bounds)."""

    def has_room(self, stream_id: str) -> bool:
        """False while the stream, produced here, may not grow: its generation then reads no more.

        A store that bounds the bytes it keeps answers False while it holds its budget and the
        stream's owner at least its share (see memory.py); True for a stream unknown or finished.
        """

    async def wait_for_room(self, stream_id: str) -> None:
        """Return when `has_room` may have changed its answer (ask it again); cancellable."""

    def mark_read(self, stream_id: str, seq: int) -> None:
        """A reader, here or elsewhere, was sent the events up to `seq` of this instance's live stream."""

    async def stop_elsewhere(self, stream_id: str) -> None:
        """Ask the instance producing `stream_id`, if another, to stop it; return once it ended."""

    def on_stop_request(self, handler: Callable[[str], None]) -> None:
        """Call `handler(stream_id)` when another instance asks for a stream to be stopped."""

    def read_elsewhere(self, stream_id: str) -> bool:
        """True when readers on other instances read this instance's `stream_id`."""

    def on_read_elsewhere(self, handler: Callable[[str, int], None]) -> None:
        """Call `handler(stream_id, seq)` when a reader elsewhere has had the events up to `seq`."""

    def reader_sent(self, stream_id: str, seq: int) -> None:
        """A reader here was sent the events up to `seq` of a stream produced on another instance."""

    async def recovered(self) -> bool:
        """After StoreUnavailableError: True once the store answers again, False if it stays away."""

    async def close(self) -> None:
        """Release the store; streams it kept in memory are gone."""
