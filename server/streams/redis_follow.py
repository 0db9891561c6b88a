"""Wait for new entries of streams produced elsewhere, on a few dedicated Redis connections.

A blocking XREAD holds its connection until it returns, so readers never block on the shared
pool: each stream is assigned to one of `reader_connections` slots, and each slot runs one
XREAD over every stream its readers wait on. A reader that starts waiting on a stream the
current XREAD does not cover interrupts it with CLIENT UNBLOCK from the pool, so it is covered
at once rather than when the block times out.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError, ResponseError

from ..shared.link import UNREACHABLE, RedisLink
from .redis_keys import entry_id, entry_seq

log = structlog.get_logger("sluice.streams")

# Most milliseconds one XREAD blocks: bounds how late a reader that raced the unblock is woken.
BLOCK_MS = 1000
# Seconds a key stays in the XREAD after its readers were woken, for them to come back.
LINGER = 1.0


class _Slot:
    """One dedicated connection and the readers waiting on it, per stream key."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.client_id: int | None = None
        self.waiters: dict[str, list[tuple[int, asyncio.Future[None]]]] = {}
        self.covered: dict[str, int] | None = None  # what the XREAD in flight waits on
        # Keys whose readers were just woken, with the entry they were woken for: covered a while
        # longer, so a reader coming back to wait after reading does not have to interrupt the XREAD.
        self.lingering: dict[str, tuple[int, float]] = {}
        self.changed = asyncio.Event()

    def to_cover(self, now: float) -> dict[str, int]:
        """Each key to read, and the entry after which to read it."""
        for key in [key for key, (_, until) in self.lingering.items() if until < now]:
            del self.lingering[key]
        covered = {key: seq for key, (seq, _) in self.lingering.items()}
        covered.update({key: min(seq for seq, _ in waiting) for key, waiting in self.waiters.items()})
        return covered

    def wake(self, key: str, before: int | None = None) -> None:
        """Wake the readers of `key` (those waiting after a seq below `before`, if given)."""
        for seq, future in self.waiters.get(key, ()):
            if not future.done() and (before is None or seq < before):
                future.set_result(None)

    def wake_all(self) -> None:
        for key in list(self.waiters):
            self.wake(key)


class Follower:
    """Readers' waits for new entries, multiplexed over a few blocking connections."""

    def __init__(self, link: RedisLink, connections: int) -> None:
        self._link = link
        read_timeout = BLOCK_MS / 1000 + 5
        self._slots = [_Slot(link.dedicated(read_timeout)) for _ in range(connections)]
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for index, slot in enumerate(self._slots):
            self._tasks.append(asyncio.create_task(self._run(slot), name=f"sluice-redis-follow-{index}"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for slot in self._slots:
            slot.wake_all()
            await slot.client.aclose()

    async def wait(self, key: str, seq: int, within: float) -> bool:
        """True once `key` has an entry after `seq` (or Redis failed: read again); False after `within` seconds."""
        slot = self._slots[zlib.crc32(key.encode()) % len(self._slots)]
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (seq, future)
        slot.waiters.setdefault(key, []).append(entry)
        slot.changed.set()
        try:
            covered = slot.covered
            if covered is not None and slot.client_id and covered.get(key, seq + 1) > seq:
                # Refused (an ACL without CLIENT) or unreachable: the block's own timeout wakes it.
                with contextlib.suppress(*UNREACHABLE, RedisError):
                    await self._link.client.client_unblock(slot.client_id)
            async with asyncio.timeout(within):
                await future
            return True
        except TimeoutError:
            return False
        finally:
            waiting = slot.waiters.get(key)
            if waiting is not None:
                waiting.remove(entry)
                if not waiting:
                    del slot.waiters[key]

    async def _run(self, slot: _Slot) -> None:
        while True:
            if not slot.waiters:
                slot.changed.clear()
                await slot.changed.wait()
                continue
            loop = asyncio.get_running_loop()
            covered = slot.to_cover(loop.time())
            slot.covered = covered
            try:
                if slot.client_id is None:
                    try:
                        slot.client_id = int(await slot.client.client_id())
                    except ResponseError:
                        slot.client_id = 0  # CLIENT not allowed: new readers wait for the block to end
                reply: Any = await slot.client.xread(
                    {key: entry_id(seq) for key, seq in covered.items()}, count=1, block=BLOCK_MS
                )
            except UNREACHABLE as exc:
                self._link.failed(exc)
                slot.client_id = None  # the next connection is another client
                slot.wake_all()  # they read again and learn that Redis is down
                await self._link.wait_up(float("inf"))
                continue
            finally:
                slot.covered = None
            for key, entries in reply or ():
                name = key.decode() if isinstance(key, bytes) else str(key)
                seq = entry_seq(entries[-1][0])
                if name in slot.waiters:
                    slot.wake(name, before=seq)
                    slot.lingering[name] = (seq, loop.time() + LINGER)
                elif name in slot.lingering:
                    slot.lingering[name] = (seq, slot.lingering[name][1])  # nobody came back: let it lapse
