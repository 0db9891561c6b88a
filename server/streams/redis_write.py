"""Copy this instance's streams into Redis without the relay ever waiting on it.

The relay's `append` only records the event (in the local buffer, which serves local readers,
and as pending here) and wakes one flusher task. The flusher sends everything pending for every
stream in one script call; while that round trip is in flight new events gather, so the batches
grow with the load and an idle stream's event goes out at once. XADD with the event's own
sequence number as the entry id makes a write idempotent: one sent twice is rejected.

When Redis fails, events stay in memory (the local buffers are bounded anyway). After any
outage, noticed by whichever task, the next flush rewrites every stream this instance still holds
(delete, then every held event, atomically in the script): a Redis that restarted empty gets them
back, one that kept them is left as it was, and no reader sees a stream half-written. A renewer
keeps each running stream's lease alive and learns which streams have readers on other instances.

A Redis that refuses writes (full, a replica, a failed save: RedisRefusedError) is an outage like
a lost connection: the events stay here and go out once it takes writes again. The flush script
is flagged as a writing script, so such a Redis refuses it whole before it runs: a rewrite never
deletes a stream whose events it then cannot add. The renewer logs whatever else fails and goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hiredis
import structlog
from redis.exceptions import NoScriptError, ResponseError

from ..shared.link import COMMAND_TIMEOUT, UNREACHABLE, RedisLink, RedisRefusedError, call_packed
from .memory import MemoryStreamStore
from .redis_keys import END, EVENT, StreamKeys
from .store import StoredEvent

log = structlog.get_logger("sluice.streams")

# One command per flush, whatever the streams and events: redis-py builds and parses each command
# in Python, which cost more than Redis did (one command per stream and flush before; one per
# event before that). So it is packed with hiredis, sent by its SHA (EVALSHA: the body is sent
# only to a Redis that does not have it yet) on a connection of its own, and read raw. A script
# runs atomically, so a rewrite (delete, then every held event) is never seen half-done. A
# replayed entry is refused by XADD and skipped; the script returns what it refused for any
# other reason. Its first line flags it (Redis 7): a Redis that refuses writes then refuses the
# script before it runs, where an unflagged one ran its DEL and had its XADDs refused after.
# KEYS: per stream, its events, its owner record (expiring with it) and its lease.
# ARGV: maxlen, the event and end field names, then per stream: seconds to expire (0: the keys'
# expiry was set less than REFRESH ago, leave it), 1 to rewrite it (else 0), its owner,
# the end entry's seq (0: not ended), the number of events, then seq and event bytes for each.
_FLUSH = """#!lua
local refused = {}
local function add(key, seq, field, value)
  local added = redis.pcall('XADD', key, 'MAXLEN', ARGV[1], '0-' .. seq, field, value)
  if type(added) == 'table' and added.err and not string.find(added.err, 'equal or smaller') then
    refused[#refused + 1] = added.err
  end
end
local a = 4
for k = 1, #KEYS, 3 do
  local ttl, rewrite, owner, ended, n = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], tonumber(ARGV[a + 4])
  a = a + 5
  if rewrite == '1' then
    redis.call('DEL', KEYS[k])
    redis.call('SET', KEYS[k + 1], owner, 'EX', ttl)
  end
  for i = 1, n do
    add(KEYS[k], ARGV[a], ARGV[2], ARGV[a + 1])
    a = a + 2
  end
  if ended ~= '0' then
    add(KEYS[k], ended, ARGV[3], '1')
    redis.call('DEL', KEYS[k + 2])
  end
  if ttl ~= '0' then
    redis.call('EXPIRE', KEYS[k], ttl)
    redis.call('EXPIRE', KEYS[k + 1], ttl)
  end
end
return refused
"""
_FLUSH_SHA = hashlib.sha1(_FLUSH.encode()).hexdigest()
# Most seconds between two refreshes of a running stream's expiry: two EXPIREs per stream and
# flush were most of Redis's work per event, and a second moves its keys' end by no more than that.
REFRESH = 1.0


@dataclass(slots=True, eq=False)
class _Outbox:
    """What of one stream has not reached Redis yet."""

    owner: str  # who started it (StreamStore.create): the key's name and fingerprint, "" for none
    pending: list[StoredEvent] = field(default_factory=list)
    last: int = 0
    finished: bool = False
    resync: bool = False
    refreshed: float = float("-inf")  # when the flush last set its keys' expiry (the loop's clock)
    forgotten: bool = False  # its local copy went before this was sent: sent once, then forgotten


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
        # The flusher's own connection: one flush at a time, and no pool to go through per flush.
        self._flusher = link.dedicated(None)  # call_packed bounds each flush
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
        try:
            with contextlib.suppress(*UNREACHABLE):
                # As long as any command may take: a Redis pausing writes (a failover) still gets them.
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    await self._flush_once()
        finally:
            await self._flusher.aclose()

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
        if not box.resync:  # a rewrite sends the local buffer, which is bounded: an outage holds no more
            box.pending.append(event)
        box.last = event.seq
        self._mark(stream_id)

    def finish(self, stream_id: str) -> None:
        box = self._outboxes.get(stream_id)
        if box is not None:
            box.finished = True
            self._mark(stream_id)

    def forget(self, stream_id: str) -> None:
        """The local copy went (expired, or dropped for the byte budget): nothing more of it is written.

        What is pending (its end, for a stream dropped as it finished) is still sent by the next
        flush, unless the stream was to be rewritten from that copy after an outage.
        """
        box = self._outboxes.get(stream_id)
        if box is not None and stream_id in self._dirty and not box.resync:
            box.forgotten = True
            return
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
        for stream_id, box in list(self._outboxes.items()):
            if box.forgotten:
                # Nothing is left here to rewrite it from: Redis keeps what it has until it expires.
                del self._outboxes[stream_id]
                self._dirty.discard(stream_id)
                continue
            box.pending, box.resync = [], True
            self._mark(stream_id)

    async def _flush_once(self) -> None:
        if self._link.outages != self._outages_seen:
            self._outages_seen = self._link.outages
            # The flusher's connection may predate the outage (a restarted Redis closed it): the
            # flush goes out on a new one rather than failing on the old one first.
            if self._flusher.connection is not None:
                await self._flusher.connection.disconnect()
            self._resync_all()
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, set()
        keys: list[str] = []
        args: list[bytes | int | str] = [self._max_entries, EVENT, END]
        sent: list[tuple[str, _Outbox, list[StoredEvent]]] = []
        now = asyncio.get_running_loop().time()
        for stream_id in dirty:
            box = self._outboxes.get(stream_id)
            if box is None:
                continue
            if box.forgotten:
                del self._outboxes[stream_id]  # sent this once: should it fail, nothing is left to resend
            self._queue(keys, args, stream_id, box, now)
            sent.append((stream_id, box, box.pending))
            box.pending, box.resync = [], False
        if not sent:
            return
        try:
            result = await self._run_flush(keys, args)
        except RedisRefusedError:
            # First, as it is a ResponseError too: refused whole, an outage. Rewritten once Redis takes writes.
            self._rewrite_later(sent)
            raise
        except ResponseError as exc:
            result = exc
        except BaseException:
            # Nothing is known to have arrived: rewrite these in full, from the local buffer, once Redis answers.
            self._rewrite_later(sent)
            raise
        if isinstance(result, ResponseError):
            # The script stopped part-way (a bug worth a line): rewrite these streams in full at the next flush.
            log.error("redis_write_refused", error=str(result))
            for stream_id, box, _ in sent:
                box.resync = True
                self._dirty.add(stream_id)
            return
        # A replayed entry is rejected by design; any other refusal is a bug worth a line.
        for error in result:
            log.error("redis_write_refused", error=str(error))

    def _rewrite_later(self, sent: list[tuple[str, _Outbox, list[StoredEvent]]]) -> None:
        """Mark streams whose flush failed for a full rewrite, from the local buffer, at the next flush."""
        for stream_id, box, _ in sent:
            box.pending = []
            box.resync = True
            self._dirty.add(stream_id)

    async def _run_flush(self, keys: list[str], args: list[bytes | int | str]) -> Any:
        """Run the flush script; its raw reply (what it refused)."""
        try:
            command = hiredis.pack_command(("EVALSHA", _FLUSH_SHA, len(keys), *keys, *args))  # type: ignore[arg-type]  # its stub says a 1-tuple
            return await call_packed(self._flusher, command, COMMAND_TIMEOUT)
        except NoScriptError:
            # A Redis that has not seen it (new, restarted, flushed): EVAL runs it and keeps it.
            command = hiredis.pack_command(("EVAL", _FLUSH, len(keys), *keys, *args))  # type: ignore[arg-type]  # its stub says a 1-tuple
            return await call_packed(self._flusher, command, COMMAND_TIMEOUT)

    def _queue(self, keys: list[str], args: list[bytes | int | str], stream_id: str, box: _Outbox, now: float) -> None:
        """Add one stream's part of the flush: a rewrite, its events, its end."""
        keys += (self._keys.events(stream_id), self._keys.owner(stream_id), self._keys.lease(stream_id))
        ttl = max(1, int(self._local.retention)) if box.finished else self._running_ttl()
        # A rewrite and an end always set the expiry (the keys were recreated, or take retention's);
        # a running stream's at most every REFRESH (or a quarter of it, if shorter).
        if box.resync or box.finished or now - box.refreshed >= min(REFRESH, ttl / 4):
            box.refreshed = now
        else:
            ttl = 0
        # A rewrite sends every held event: whatever Redis kept or lost, they replace it (and the
        # owner record, which a Redis that restarted empty lost too).
        events = self._local.held(stream_id) if box.resync else box.pending
        args += (ttl, int(box.resync), box.owner, box.last + 1 if box.finished else 0, len(events))
        for event in events:
            args += (event.seq, event.data)

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
            except Exception:
                # A bug, not an outage: said at the lease's pace (no slower, or every lease lapses),
                # and the loop goes on. Once its end went unseen and no lease was renewed again.
                log.exception("redis_renew_failed")

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
