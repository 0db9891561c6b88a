"""The in-process StreamStore: a dict of buffers, each bounded, each dropped after its retention.

One byte budget (`max_kept_bytes`) covers every buffer, shared fairly between owners (the keys
that started the streams, see StreamStore.create): an owner's fair share is the budget divided
by the owners holding streams. Past the budget, the owner holding most over its share loses its
stream that finished longest ago first; an owner at or under its share loses nothing to it.
Without keys every stream has the owner "", and the rules are the plain budget.

Live streams are never dropped for the budget, so it is kept while they grow, not only when one
starts: once the store holds its budget, a live stream whose owner holds at least its share has
no room (`has_room`), and its generation stops reading its upstream, as it does for unread events
(generation.py), until room comes back (`wait_for_room`): bytes let go (streams finished and
shed, or expired), an owner gone (the others' shares grow), or a reader having had the stream's
events, which then go first, oldest first, while the stream has no room (resuming from before
them is a 410; the events nobody has had are kept; a stream that finishes lets them go too before
it could be shed whole, so its reader still gets its end). The check comes before each upstream
read, so the store holds at most its budget plus one upstream read per live stream, and streams
nobody reads are then ended by the reader grace period (registry.py). An owner within its share
is never held back for another's streams: when a key arrives after another filled the budget
with live streams, it may grow to its share meanwhile (the first's streams are held until they are
read or end), so until then the store holds more than its budget: by each later key's share.

A new stream is refused to an owner holding at least its share while the store holds its budget,
where each live stream also counts for `reserve` bytes (32 KiB: room for the events of one upstream
read, which it is about to store) on top of its events. Counting bytes alone, streams that have not
had their first token hold none, so a burst of starts all passed (150 of them at once, and each then
grew); counted so, one owner starts at most budget / reserve streams at once (62 for 2 MB; 32,768
for the default 1 GiB, more than the default `max_streams`), another key still gets its share, and a
stream that grew counts its bytes. The reservation only admits: the hold-back counts events alone, so streams that are
read can use the whole share.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from .store import EventsDroppedError, Slice, StoredEvent

# Bytes each live stream counts for, besides its events, when a new stream asks to start: room for
# the events of one upstream read (the upstream client takes at most twice 16 KiB at once, see
# upstreams/http1.py; its events are about as large), which is what a live stream may still add
# once the budget is reached.
RESERVE = 32 << 10


@dataclass(slots=True, eq=False)
class _Buffer:
    """One stream's retained events, keyed by sequence number (`first`..`last`)."""

    events: dict[int, StoredEvent] = field(default_factory=dict)
    first: int = 1
    last: int = 0
    size: int = 0  # bytes of the events kept
    owner: str = ""  # who started it (StreamStore.create), never the key or its hash
    read: int = 0  # the last event a reader was sent (`mark_read`): past the budget, those go first
    finished: bool = False
    expiry: asyncio.TimerHandle | None = None
    # Replaced after every change, so a waiter wakes once per change and never misses one.
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


@dataclass(slots=True, eq=False)
class _Holder:
    """What one owner's streams hold: how many, their bytes, and its finished ones in the order they finished."""

    streams: int = 0
    size: int = 0
    finished: dict[str, None] = field(default_factory=dict)


class MemoryStreamStore:
    """StreamStore in this process's memory: at most `max_events` and `max_bytes` per stream, `max_streams` streams.

    And at most `max_kept_bytes` of events in all, shared between owners (see the module
    docstring): past it the streams that finished longest ago of the owner most over its share go
    first (a reader replaying one is told `stream_expired`), and while live streams alone hold that
    much a new stream is refused to an owner holding its share, counting `reserve` bytes more per
    live stream; a live stream of an owner holding its share has no room to grow (`has_room`).
    Without it, one client starting streams nobody reads kept up to `max_bytes` each for their
    retention, `max_streams` times over.
    """

    def __init__(
        self,
        *,
        max_events: int,
        max_streams: int,
        retention: float,
        max_bytes: int = 4 << 20,
        max_kept_bytes: int | None = None,
        reserve: int = RESERVE,
        on_drop: Callable[[str], None] | None = None,
    ) -> None:
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._max_kept_bytes = max_kept_bytes if max_kept_bytes is not None else 1 << 62
        self._kept_bytes = 0
        self._reserve = reserve
        self._max_streams = max_streams
        self._retention = retention
        self._on_drop = on_drop
        self._buffers: dict[str, _Buffer] = {}
        # Finished streams in the order they finished: the first is evicted when a stream more is needed.
        self._finished: dict[str, None] = {}
        # Owners with a stream kept, and what they hold: the byte budget is shared between them.
        self._holders: dict[str, _Holder] = {}
        # Live streams whose generation waits for room (`wait_for_room`), and what wakes each.
        self._waiting: dict[str, asyncio.Future[None]] = {}

    def __len__(self) -> int:
        return len(self._buffers)

    def __contains__(self, stream_id: object) -> bool:
        return stream_id in self._buffers

    @property
    def retention(self) -> float:
        """Seconds a finished stream is kept."""
        return self._retention

    @property
    def kept_bytes(self) -> int:
        """Bytes of events kept now, across every stream."""
        return self._kept_bytes

    def held(self, stream_id: str) -> list[StoredEvent]:
        """Every event of the stream still kept, in order."""
        buffer = self._buffers.get(stream_id)
        return [] if buffer is None else [buffer.events[n] for n in range(buffer.first, buffer.last + 1)]

    async def create(self, stream_id: str, owner: str = "") -> bool:
        if stream_id in self._buffers:
            raise ValueError(f"stream {stream_id!r} exists")
        if len(self._buffers) >= self._max_streams:
            if not self._finished:
                return False
            self._drop(next(iter(self._finished)))
        self._shed()
        if self._claimed() >= self._max_kept_bytes and self._claims_its_share(owner):
            return False  # live streams alone hold the budget
        self._buffers[stream_id] = _Buffer(owner=owner)
        self._holders.setdefault(owner, _Holder()).streams += 1
        return True

    async def owner(self, stream_id: str) -> str | None:
        buffer = self._buffers.get(stream_id)
        return None if buffer is None else buffer.owner

    async def append(self, stream_id: str, event: StoredEvent) -> None:
        buffer = self._buffers[stream_id]
        if buffer.finished:
            raise ValueError(f"stream {stream_id!r} has finished")
        if event.seq != buffer.last + 1:
            raise ValueError(f"event {event.seq} does not follow {buffer.last}")
        holder = self._holders[buffer.owner]
        buffer.events[event.seq] = event
        buffer.last = event.seq
        buffer.size += len(event.data)
        holder.size += len(event.data)
        self._kept_bytes += len(event.data)
        while len(buffer.events) > self._max_events or (buffer.size > self._max_bytes and len(buffer.events) > 1):
            self._drop_oldest(buffer, holder)
        buffer.notify()
        self._shed()

    async def finish(self, stream_id: str) -> None:
        buffer = self._buffers.get(stream_id)
        if buffer is None or buffer.finished:
            return
        buffer.finished = True
        self._finished[stream_id] = None
        holder = self._holders[buffer.owner]
        holder.finished[stream_id] = None
        loop = asyncio.get_running_loop()
        buffer.expiry = loop.call_later(self._retention, self._drop, stream_id)
        buffer.notify()
        # Its last read may have taken the store past its budget: what its reader had goes first,
        # so the stream it is still reading is not dropped whole for it.
        self._let_read_go(buffer, holder)
        self._shed()

    async def read_after(self, stream_id: str, seq: int, limit: int) -> Slice | None:
        buffer = self._buffers.get(stream_id)
        if buffer is None:
            return None
        start = seq + 1
        if start < buffer.first:
            raise EventsDroppedError(f"events {start}..{buffer.first - 1} of {stream_id!r} were dropped")
        end = min(buffer.last, seq + limit)
        events = tuple(buffer.events[n] for n in range(start, end + 1))
        return Slice(events, finished=buffer.finished and end >= buffer.last)

    async def peek(self, stream_id: str, seq: int) -> Slice | None:
        return await self.read_after(stream_id, seq, 1)  # a read here counts nobody

    async def wait(self, stream_id: str, seq: int) -> None:
        buffer = self._buffers.get(stream_id)
        if buffer is None or buffer.finished or buffer.last > seq:
            return
        await buffer.changed.wait()

    def has_room(self, stream_id: str) -> bool:
        """False while the store holds its budget and the stream's owner at least its share.

        Then the events of the stream a reader has had go first (oldest first, until it has room or
        none is left): a stream that is read goes on within its share. Always True for a stream
        that finished or is unknown.
        """
        buffer = self._buffers.get(stream_id)
        if buffer is None or buffer.finished:
            return True
        return self._let_read_go(buffer, self._holders[buffer.owner])

    async def wait_for_room(self, stream_id: str) -> None:
        """Return when the stream may have room again (ask `has_room`): bytes let go, an owner gone, or a read."""
        waiter = self._waiting[stream_id] = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            if self._waiting.get(stream_id) is waiter:
                del self._waiting[stream_id]  # cancelled (the generation was stopped)

    def mark_read(self, stream_id: str, seq: int) -> None:
        """A reader, here or elsewhere, was sent the events up to `seq` of this live stream."""
        buffer = self._buffers.get(stream_id)
        if buffer is None or seq <= buffer.read:
            return
        buffer.read = seq
        self._wake(stream_id)

    async def stop_elsewhere(self, stream_id: str) -> None:
        return None  # one process: a stream not running here does not run anywhere

    def on_stop_request(self, handler: Callable[[str], None]) -> None:
        return None

    def read_elsewhere(self, stream_id: str) -> bool:
        return False

    def reader_sent(self, stream_id: str, seq: int) -> None:
        return None  # one process: every stream read here is produced here

    def on_read_elsewhere(self, handler: Callable[[str, int], None]) -> None:
        return None

    async def recovered(self) -> bool:
        return False  # memory never becomes unavailable

    def discard(self, stream_id: str) -> None:
        """Forget a stream at once, finished or not."""
        self._drop(stream_id)

    async def close(self) -> None:
        for stream_id in list(self._buffers):
            self._drop(stream_id)

    def _shed(self) -> None:
        """While more than `max_kept_bytes` are kept, drop the stream that finished longest ago of the
        owner holding most over its share; owners within their share keep theirs.
        """
        while self._kept_bytes > self._max_kept_bytes:
            holders = len(self._holders)
            over = [h for h in self._holders.values() if h.size * holders > self._max_kept_bytes and h.finished]
            if not over:
                return  # live streams hold the rest: `create` refuses the owners holding their share
            heaviest = max(over, key=lambda holder: holder.size)
            self._drop(next(iter(heaviest.finished)))

    def _claimed(self) -> int:
        """Bytes kept, and `reserve` more per live stream: what a new stream is admitted against."""
        return self._kept_bytes + self._reserve * (len(self._buffers) - len(self._finished))

    def _claims_its_share(self, owner: str) -> bool:
        """True when `owner` claims at least its fair share of the byte budget, counting it among the holders."""
        holder = self._holders.get(owner)
        if holder is None:
            return False  # it holds nothing
        claimed = holder.size + self._reserve * (holder.streams - len(holder.finished))
        return claimed * len(self._holders) >= self._max_kept_bytes

    def _let_read_go(self, buffer: _Buffer, holder: _Holder) -> bool:
        """While the store holds its budget and `holder` its share, drop the stream's events a reader had.

        False when that is not enough: what is left of the stream nobody has had.
        """
        while self._kept_bytes >= self._max_kept_bytes and holder.size * len(self._holders) >= self._max_kept_bytes:
            if buffer.first > min(buffer.read, buffer.last):
                return False
            self._drop_oldest(buffer, holder)
        return True

    def _drop_oldest(self, buffer: _Buffer, holder: _Holder) -> None:
        """Let the stream's oldest kept event go."""
        dropped = len(buffer.events.pop(buffer.first).data)
        buffer.size -= dropped
        holder.size -= dropped
        self._kept_bytes -= dropped
        buffer.first += 1

    def _wake(self, stream_id: str | None = None) -> None:
        """Wake the generation of `stream_id` waiting for room, or every one (None)."""
        if stream_id is None:
            waiters, self._waiting = list(self._waiting.values()), {}
        else:
            waiter = self._waiting.pop(stream_id, None)
            waiters = [] if waiter is None else [waiter]
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _drop(self, stream_id: str) -> None:
        buffer = self._buffers.pop(stream_id, None)
        if buffer is None:
            return
        self._kept_bytes -= buffer.size
        self._finished.pop(stream_id, None)
        holder = self._holders[buffer.owner]
        holder.streams -= 1
        holder.size -= buffer.size
        holder.finished.pop(stream_id, None)
        if not holder.streams:
            del self._holders[buffer.owner]
        if buffer.expiry is not None:
            buffer.expiry.cancel()
        buffer.notify()  # a waiter, if any, then finds the stream gone
        self._wake()  # bytes let go, perhaps an owner: held streams may have room
        if self._on_drop is not None:
            self._on_drop(stream_id)
