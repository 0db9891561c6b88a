"""Copy this instance's streams into Redis without the relay ever waiting on it.

The relay's `append` only records the event (in the local buffer, which serves local readers,
and as pending here) and wakes one flusher task. The flusher sends everything pending for every
stream in one pipeline; while that round trip is in flight new events gather, so the batches
grow with the load and an idle stream's event goes out at once. XADD with the event's own
sequence number as the entry id makes a write idempotent: one sent twice is rejected.

When Redis fails, events stay in memory (the local buffers are bounded anyway). After any
outage, noticed by whichever task, the next flush rewrites every stream this instance still holds,
each in one MULTI/EXEC (delete, then every held event): a Redis that restarted empty gets them
back, one that kept them is left as it was, and no reader sees a stream half-written. A renewer
keeps each running stream's lease alive and learns which streams have readers on other instances.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from ..shared.link import COMMAND_TIMEOUT, UNREACHABLE, RedisLink
from .memory import MemoryStreamStore
from .redis_keys import END, StreamKeys, entry_id
from .store import StoredEvent

log = structlog.get_logger("sluice.streams")

# One command per stream and flush, however many events: redis-py builds each command in Python,
# which cost more than Redis did when every event was its own XADD. A replayed entry is refused
# by XADD and skipped; the script returns what it refused for any other reason.
# KEYS[1]: the stream, KEYS[2]: its owner record (expiring with it). ARGV: maxlen, seconds to
# expire, then seq and event bytes for each event.
_APPEND = """
local refused = {}
for i = 3, #ARGV, 2 do
  local added = redis.pcall('XADD', KEYS[1], 'MAXLEN', ARGV[1], '0-' .. ARGV[i], 'e', ARGV[i + 1])
  if type(added) == 'table' and added.err and not string.find(added.err, 'equal or smaller') then
    refused[#refused + 1] = added.err
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return refused
"""


@dataclass(slots=True, eq=False)
class _Outbox:
    """What of one stream has not reached Redis yet."""

    owner: str  # the name of the gateway key that started it, "" for none
    pending: list[StoredEvent] = field(default_factory=list)
    last: int = 0
    finished: bool = False
    resync: bool = False


class RedisWriter:
    """The producing side: batched writes, leases, and the streams read elsewhere."""

    def __init__(self, link: RedisLink, keys: StreamKeys, local: MemoryStreamStore, *, max_events: int) -> None:
        self._link = link
        self._keys = keys
        self._local = local
        self._max_entries = max_events + 1  # the events a local buffer keeps, and the end entry
        self._lease_ms = int(link.settings.lease_seconds * 1000)
        self._outboxes: dict[str, _Outbox] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._outages_seen = link.outages
        # Streams read on other instances, and how far; told to `on_read_elsewhere` at each renewal.
        self.read_elsewhere: dict[str, int] = {}
        self.on_read_elsewhere: Callable[[str, int], None] | None = None

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._flush_forever(), name="sluice-redis-flush"),
            asyncio.create_task(self._renew_forever(), name="sluice-redis-renew"),
        ]

    async def close(self) -> None:
        """Stop, then send what is pending if Redis answers now."""
        # The flusher first: two flushes at once could land out of order, and Redis would refuse
        # the earlier events as replays. One cut short marks its streams for a full rewrite.
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(*UNREACHABLE):
            # As long as any command may take: a Redis pausing writes (a failover) still gets them.
            async with asyncio.timeout(COMMAND_TIMEOUT):
                await self._flush_once()

    async def open(self, stream_id: str, owner: str) -> None:
        """Take the lease on a new stream and record its owner: the one round trip its start waits for."""
        pipe = self._link.client.pipeline(transaction=False)
        pipe.set(self._keys.lease(stream_id), self._link.instance, px=self._lease_ms)
        pipe.set(self._keys.owner(stream_id), owner, ex=self._running_ttl())
        await pipe.execute()
        self._outboxes[stream_id] = _Outbox(owner)

    def _running_ttl(self) -> int:
        """Seconds a running stream's keys outlive a lost producer: its retention, then they go."""
        return max(1, int(self._local.retention + self._link.settings.lease_seconds))

    def add(self, stream_id: str, event: StoredEvent) -> None:
        box = self._outboxes[stream_id]
        box.pending.append(event)
        box.last = event.seq
        self._mark(stream_id)

    def finish(self, stream_id: str) -> None:
        box = self._outboxes.get(stream_id)
        if box is not None:
            box.finished = True
            self._mark(stream_id)

    def forget(self, stream_id: str) -> None:
        """The local copy expired: nothing of it is written any more."""
        self._outboxes.pop(stream_id, None)
        self._dirty.discard(stream_id)

    def _mark(self, stream_id: str) -> None:
        self._dirty.add(stream_id)
        self._wake.set()

    async def _flush_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._flush_once()
            except UNREACHABLE as exc:
                self._link.failed(exc)
                await self._link.wait_up(float("inf"))
                self._wake.set()
            except Exception:
                # The task's boundary: its streams are marked for a full rewrite at the next event.
                log.exception("redis_flush_failed")

    def _resync_all(self) -> None:
        for stream_id, box in self._outboxes.items():
            box.resync = True
            self._mark(stream_id)

    async def _flush_once(self) -> None:
        if self._link.outages != self._outages_seen:
            self._outages_seen = self._link.outages
            self._resync_all()
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, set()
        # A rewrite must be atomic, so readers never see a stream deleted and not yet rewritten.
        rewrite = any(box.resync for stream_id in dirty if (box := self._outboxes.get(stream_id)) is not None)
        pipe = self._link.client.pipeline(transaction=rewrite)
        sent: list[tuple[str, _Outbox, list[StoredEvent], bool]] = []
        for stream_id in dirty:
            box = self._outboxes.get(stream_id)
            if box is None:
                continue
            events = self._local.held(stream_id) if box.resync else box.pending
            self._queue(pipe, stream_id, box, events)
            sent.append((stream_id, box, box.pending, box.resync))
            box.pending, box.resync = [], False
        try:
            results = await pipe.execute(raise_on_error=False)
        except BaseException:
            # Nothing is known to have arrived: send these again, in full, once Redis answers.
            for stream_id, box, pending, _ in sent:
                box.pending = pending + box.pending
                box.resync = True
                self._dirty.add(stream_id)
            raise
        for result in results:
            # A replayed entry is rejected by design; any other refusal is a bug worth a line.
            refused = [str(result)] if isinstance(result, ResponseError) else result if isinstance(result, list) else []
            for error in refused:
                if "equal or smaller" not in str(error):
                    log.error("redis_write_refused", error=str(error))

    def _queue(self, pipe: Pipeline, stream_id: str, box: _Outbox, events: list[StoredEvent]) -> None:
        key = self._keys.events(stream_id)
        owner = self._keys.owner(stream_id)
        ttl = max(1, int(self._local.retention)) if box.finished else self._running_ttl()
        if box.resync:
            pipe.delete(key)  # whatever Redis kept or lost, the held events replace it
            pipe.set(owner, box.owner, ex=ttl)  # and a Redis that restarted empty lost the owner too
        if events:
            args: list[bytes | int] = [self._max_entries, ttl]
            for event in events:
                args += (event.seq, event.data)
            pipe.eval(_APPEND, 2, key, owner, *args)
        if box.finished:
            pipe.xadd(key, {END: b"1"}, id=entry_id(box.last + 1), maxlen=self._max_entries, approximate=False)
            pipe.expire(key, ttl)
            pipe.expire(owner, ttl)
            pipe.delete(self._keys.lease(stream_id))

    async def _renew_forever(self) -> None:
        interval = self._link.settings.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)  # the lease's own clock, not a synchronisation
            if not self._link.up:
                continue
            try:
                await self._renew()
            except UNREACHABLE as exc:
                self._link.failed(exc)

    async def _renew(self) -> None:
        running = [stream_id for stream_id, box in self._outboxes.items() if not box.finished]
        if not running:
            await self._link.client.ping()
            return
        pipe = self._link.client.pipeline(transaction=False)
        ttl = self._running_ttl()
        for stream_id in running:
            pipe.set(self._keys.lease(stream_id), self._link.instance, px=self._lease_ms)
            pipe.expire(self._keys.owner(stream_id), ttl)  # a stream with no event for a while keeps it
            pipe.get(self._keys.read(stream_id))
        results = await pipe.execute()
        self.read_elsewhere = {
            stream_id: int(seq) for stream_id, seq in zip(running, results[2::3], strict=True) if seq is not None
        }
        if self.on_read_elsewhere is not None:
            for stream_id, seq in self.read_elsewhere.items():
                self.on_read_elsewhere(stream_id, seq)
