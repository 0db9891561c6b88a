"""Wait for new entries of streams produced elsewhere, on a few dedicated Redis connections.

A blocking XREAD holds its connection until it returns, so readers never block on the shared
pool: each stream is assigned to one of `reader_connections` slots, and each slot runs one
XREAD over every stream its readers wait on. A reader that starts waiting on a stream the
current XREAD does not cover wakes it by adding an entry to the slot's own wake stream, which
every XREAD of the slot covers after the last wake it saw: the XREAD returns at once whether it
reached Redis before or after that entry (CLIENT UNBLOCK, used before, was lost when it
overtook the XREAD, and the reader then waited for the block to time out).

The entries an XREAD brings are kept (the latest few per stream, without a gap) and handed to
the readers it wakes: `recent()` answers their next read from memory, so a woken reader costs
no second round trip, and the readers of one stream on this instance share one copy. An entry
never changes once written (its id is its sequence number), so a kept copy is never stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections import deque
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError
from redis.typing import KeyT, StreamIdT

from ..shared.link import UNREACHABLE, RedisLink
from .redis_keys import StreamKeys, entry_id, entry_seq

log = structlog.get_logger("sluice.streams")

# Most milliseconds one XREAD blocks: bounds how late a reader that raced the unblock is woken.
BLOCK_MS = 1000
# Seconds a stream stays in the XREAD after its last reader stopped waiting, for it to come back.
LINGER = 1.0
# Seconds a slot's wake stream outlives its last wake.
WAKE_TTL = 60

Entry = tuple[bytes, dict[bytes, bytes]]


class _Followed:
    """One stream a slot reads: the readers waiting on it and the latest entries its XREADs brought."""

    __slots__ = ("entries", "first", "last", "until", "waiters")

    def __init__(self, keep: int) -> None:
        self.waiters: list[tuple[int, asyncio.Future[bool]]] = []
        self.entries: deque[Entry] = deque(maxlen=keep)  # consecutive sequence numbers, `first` to `last`
        self.first = self.last = -1  # -1: none kept
        self.until = 0.0  # with nobody waiting, covered until then

    def cover(self) -> int:
        """The entry after which the next XREAD reads: the earliest any reader waits after."""
        points = [seq for seq, _ in self.waiters]
        if self.last >= 0:
            points.append(self.last)
        return min(points)

    def add(self, entries: list[Entry], now: float) -> None:
        """Keep the entries an XREAD brought, then wake the readers that have something new."""
        for entry in entries:
            seq = entry_seq(entry[0])
            if self.last >= 0 and seq <= self.last:
                continue  # read from an earlier point for a reader further behind: kept already
            if seq != self.last + 1:
                self.entries.clear()  # a gap (trimmed, or rewritten after an outage): start over
                self.first = seq
            self.entries.append(entry)
            self.last = seq
        self.first = max(self.first, self.last + 1 - len(self.entries))  # the deque dropped the oldest
        # The woken leave the list now, not when their tasks next run: the next XREAD, sent before
        # that, would otherwise read again from where they waited and bring these entries twice.
        waiting = []
        for seq, future in self.waiters:
            if seq >= self.last:
                waiting.append((seq, future))
            elif not future.done():
                future.set_result(True)
        if len(waiting) < len(self.waiters):
            self.waiters = waiting
            self.until = now + LINGER  # covered while they read what woke them and come back

    def after(self, seq: int, limit: int) -> list[Entry]:
        """Up to `limit` + 1 kept entries right after `seq` (the extra one shows an end); [] if not kept."""
        if not self.first <= seq + 1 <= self.last:
            return []
        start = seq + 1 - self.first
        # Indexing a deque near either end is cheap; islice would walk from the oldest kept entry.
        return [self.entries[i] for i in range(start, min(start + limit + 1, len(self.entries)))]

    def clear(self) -> None:
        """Redis failed: wake every reader (they read again and learn it) and keep nothing."""
        for _, future in self.waiters:
            if not future.done():
                future.set_result(True)
        self.entries.clear()
        self.first = self.last = -1


class _Slot:
    """One dedicated connection, the streams its XREAD covers, and its wake stream."""

    def __init__(self, client: aioredis.Redis, wake_key: str) -> None:
        self.client = client
        self.wake_key = wake_key
        self.woken_after: StreamIdT = b"0-0"  # the last wake entry an XREAD returned
        self.streams: dict[str, _Followed] = {}
        self.covered: dict[str, int] | None = None  # what the XREAD in flight waits on
        self.waking = False  # a wake for the XREAD in flight was sent
        self.changed = asyncio.Event()

    def to_cover(self, now: float) -> dict[str, int]:
        """Each key to read, and the entry after which to read it; streams nobody came back to are let go."""
        for key in [key for key, one in self.streams.items() if not one.waiters and one.until < now]:
            del self.streams[key]
        return {key: one.cover() for key, one in self.streams.items()}

    def forget(self) -> None:
        """Redis failed: wake every reader (they read again and learn it) and drop what was kept."""
        for key, one in list(self.streams.items()):
            one.clear()
            if not one.waiters:
                del self.streams[key]


class Follower:
    """Readers' waits for new entries, multiplexed over a few blocking connections."""

    def __init__(self, link: RedisLink, keys: StreamKeys, connections: int, *, keep: int = 256) -> None:
        self._link = link
        self._keep = max(1, keep)
        read_timeout = BLOCK_MS / 1000 + 5
        self._slots = [
            _Slot(link.dedicated(read_timeout), keys.wake(link.instance, index)) for index in range(connections)
        ]
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for index, slot in enumerate(self._slots):
            self._tasks.append(asyncio.create_task(self._run(slot), name=f"sluice-redis-follow-{index}"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for slot in self._slots:
            slot.forget()
            await slot.client.aclose()

    def recent(self, key: str, seq: int, limit: int) -> list[Entry]:
        """The entries of `key` right after `seq` that a recent XREAD brought (up to `limit` + 1), or []."""
        followed = self._slot(key).streams.get(key)
        return followed.after(seq, limit) if followed is not None else []

    async def wait(self, key: str, seq: int, within: float) -> bool:
        """True once `key` has an entry after `seq` (or Redis failed: read again); False after `within` seconds."""
        slot = self._slot(key)
        followed = slot.streams.get(key)
        if followed is None:
            followed = slot.streams[key] = _Followed(self._keep)
        elif followed.last > seq:
            return True  # brought meanwhile
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        # A bare timer: cheaper per event than asyncio.timeout's, and the future carries the answer.
        timer = loop.call_later(within, _settle, future, False)
        entry = (seq, future)
        followed.waiters.append(entry)
        slot.changed.set()
        try:
            covered = slot.covered
            if covered is not None and not slot.waking and covered.get(key, seq + 1) > seq:
                slot.waking = True
                await self._wake(slot)
            return await future
        finally:
            timer.cancel()
            with contextlib.suppress(ValueError):  # woken: removed already
                followed.waiters.remove(entry)
            followed.until = loop.time() + LINGER

    def _slot(self, key: str) -> _Slot:
        return self._slots[zlib.crc32(key.encode()) % len(self._slots)]

    async def _wake(self, slot: _Slot) -> None:
        """End the slot's XREAD now, so the next one covers what it did not."""
        pipe = self._link.client.pipeline(transaction=False)
        pipe.xadd(slot.wake_key, {b"w": b""}, maxlen=1, approximate=False)
        pipe.expire(slot.wake_key, WAKE_TTL)  # an instance that died leaves nothing behind for long
        # Unreachable: the XREAD fails too, and wakes every reader. Refused (an ACL, a read-only
        # replica): the reader is covered when the block times out.
        with contextlib.suppress(*UNREACHABLE, RedisError):
            await pipe.execute()

    async def _run(self, slot: _Slot) -> None:
        while True:
            covered = slot.to_cover(asyncio.get_running_loop().time())
            if not covered:
                slot.changed.clear()
                await slot.changed.wait()
                continue
            slot.covered, slot.waking = covered, False
            streams: dict[KeyT, StreamIdT] = {key: entry_id(seq) for key, seq in covered.items()}
            streams[slot.wake_key] = slot.woken_after
            try:
                reply: Any = await slot.client.xread(streams, count=self._keep, block=BLOCK_MS)
            except UNREACHABLE as exc:
                self._link.failed(exc)
                slot.forget()
                await self._link.wait_up(float("inf"))
                continue
            finally:
                slot.covered = None
            now = asyncio.get_running_loop().time()
            for key, entries in reply or ():
                name = key.decode() if isinstance(key, bytes) else str(key)
                if name == slot.wake_key:
                    slot.woken_after = entries[-1][0]
                elif (followed := slot.streams.get(name)) is not None:
                    followed.add(entries, now)


def _settle(future: asyncio.Future[bool], result: bool) -> None:
    """Answer a wait, unless it was answered already."""
    if not future.done():
        future.set_result(result)
