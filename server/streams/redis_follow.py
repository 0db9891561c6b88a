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

The XREAD is packed with hiredis and its reply read raw off the slot's connection: redis-py's
command path and reply parsing (a dict per entry) cost the reader more than the rest of the
wait, one XREAD for every few events.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

import hiredis
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from ..shared.link import PING_INTERVAL, UNREACHABLE, RedisLink, call_packed
from .redis_keys import END, StreamKeys

log = structlog.get_logger("sluice.streams")

# Most milliseconds one XREAD blocks: bounds how late a reader that raced the unblock is woken.
BLOCK_MS = 1000
# Seconds a stream stays in the XREAD after its last reader stopped waiting, for it to come back.
LINGER = 1.0
# Seconds a slot's wake stream outlives its last wake.
WAKE_TTL = 60
# The longest pause before a slot's next XREAD after one failed for a bug.
FAILED_BACKOFF_MAX = 5.0

# One entry as readers get it: its sequence number, and its event's bytes (None: the end entry).
Entry = tuple[int, bytes | None]


class _Followed:
    """One stream a slot reads: the readers waiting on it and the latest entries its XREADs brought."""

    __slots__ = ("entries", "first", "last", "until", "waiters")

    def __init__(self, keep: int) -> None:
        self.waiters: list[tuple[int, asyncio.Future[bool]]] = []
        self.entries: deque[Entry] = deque(maxlen=keep)  # consecutive sequence numbers, `first` to `last`
        self.first = self.last = -1  # -1: none kept
        self.until = 0.0  # with nobody waiting, covered until then

    def add(self, entries: list[Any], now: float) -> None:
        """Keep the entries an XREAD brought (raw: id, then fields), then wake the readers that have something new."""
        for entry_id, fields in entries:
            seq = int(entry_id[2:])  # the id is b"0-<seq>"
            if self.last >= 0 and seq <= self.last:
                continue  # read from an earlier point for a reader further behind: kept already
            if seq != self.last + 1:
                self.entries.clear()  # a gap (trimmed, or rewritten after an outage): start over
                self.first = seq
            # Each entry has one field: the event's, or the end's.
            self.entries.append((seq, None if fields[0] == END else fields[1]))
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
        self.waiters = []  # like the woken in `add`: a reader answered True is off the list
        self.entries.clear()
        self.first = self.last = -1


class _Slot:
    """One dedicated connection, the streams its XREAD covers, and its wake stream."""

    def __init__(self, client: aioredis.Redis, wake_key: str) -> None:
        self.client = client
        self.wake_key = wake_key
        self.woken_after = b"0-0"  # the last wake entry an XREAD returned
        self.streams: dict[str, _Followed] = {}
        self.covered: dict[str, int] | None = None  # what the XREAD in flight waits on
        self.waking = False  # a wake for the XREAD in flight was sent
        self.changed = asyncio.Event()

    def to_cover(self, now: float) -> dict[str, int]:
        """Each key to read, and the entry after which to read it; streams nobody came back to are let go.

        A stream is read after the earliest point any of its readers waits at, or its last kept entry.
        """
        covered: dict[str, int] = {}
        gone: list[str] = []
        for key, one in self.streams.items():
            waiters = one.waiters
            if waiters:
                point = waiters[0][0] if len(waiters) == 1 else min(seq for seq, _ in waiters)
                if 0 <= one.last < point:
                    point = one.last
            elif one.last < 0 or one.until < now:
                gone.append(key)  # nobody waits, and nothing kept (a wait that timed out) or lingered out
                continue
            else:
                point = one.last
            covered[key] = point
        for key in gone:
            del self.streams[key]
        return covered

    def forget(self) -> None:
        """Redis failed: wake every reader (they read again and learn it) and drop what was kept."""
        for one in self.streams.values():
            one.clear()
        self.streams.clear()


class Follower:
    """Readers' waits for new entries, multiplexed over a few blocking connections."""

    def __init__(self, link: RedisLink, keys: StreamKeys, connections: int, *, keep: int = 256) -> None:
        self._link = link
        self._keep = max(1, keep)
        self._slots = [_Slot(link.dedicated(None), keys.wake(link.instance, index)) for index in range(connections)]
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
            # Woken with True: taken off the list already (by `add` or `clear`), no search to make.
            if future.cancelled() or not future.done() or not future.result():
                with contextlib.suppress(ValueError):
                    followed.waiters.remove(entry)
            followed.until = loop.time() + LINGER

    def _slot(self, key: str) -> _Slot:
        # The str's own hash: computed once per string, and only this process needs it to be stable.
        return self._slots[hash(key) % len(self._slots)]

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
        loop = asyncio.get_running_loop()
        wake_key = slot.wake_key.encode()
        pause = PING_INTERVAL
        while True:
            covered = slot.to_cover(loop.time())
            if not covered:
                slot.changed.clear()
                await slot.changed.wait()
                continue
            slot.covered, slot.waking = covered, False
            ids = [b"0-%d" % seq for seq in covered.values()]
            args = (b"XREAD", b"COUNT", self._keep, b"BLOCK", BLOCK_MS, b"STREAMS", *covered, wake_key, *ids)
            command = hiredis.pack_command((*args, slot.woken_after))  # type: ignore[arg-type]  # its stub says a 1-tuple
            try:
                reply = await call_packed(slot.client, command, BLOCK_MS / 1000 + 5)
            except UNREACHABLE as exc:
                self._link.failed(exc)
                slot.forget()
                await self._link.wait_up(float("inf"))
                continue
            except Exception:
                # A bug (a key of another type, an ACL): said, its readers woken to read again (and
                # learn it there), and the slot goes on at a slowing pace rather than ending for good.
                log.exception("redis_follow_failed")
                slot.forget()
                await asyncio.sleep(pause)  # a retry pace, not a synchronisation
                pause = min(FAILED_BACKOFF_MAX, pause * 2)
                continue
            finally:
                slot.covered = None
            pause = PING_INTERVAL
            if not reply:
                continue  # the block timed out
            now = loop.time()
            for key, entries in reply.items() if isinstance(reply, dict) else reply:  # RESP3 or RESP2
                if key == wake_key:
                    slot.woken_after = entries[-1][0]
                elif (followed := slot.streams.get(key.decode())) is not None:
                    followed.add(entries, now)


def _settle(future: asyncio.Future[bool], result: bool) -> None:
    """Answer a wait, unless it was answered already."""
    if not future.done():
        future.set_result(result)
