"""Circuit breaker records in Redis, so an upstream one instance finds failing is skipped by all.

`BreakerStore.update` takes a Python function, which cannot run inside Redis, so each update is an
optimistic transaction: WATCH the record, read it, apply the function, write it in MULTI/EXEC,
and start again if another instance changed it in between. Within one instance the updates of a
record take turns (a lock per name), so only other instances' updates ever conflict. Records use wall-clock times
(`Breakers` reads time.time), which instances share.

With Redis unreachable, each instance keeps breakers of its own in memory meanwhile: a breaker
is a protection, and one that counts a single instance's failures still protects.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

from redis.exceptions import WatchError

from ..upstreams.breaker import BreakerRecord, MemoryBreakerStore
from .link import UNREACHABLE, RedisLink

# Conflicting updates retried before the change is applied to the local records instead. Each
# conflict means another instance's update went through, so this is only reached under a storm.
MAX_TRIES = 100
# A record untouched this long is forgotten (a closed breaker is the default anyway).
IDLE_SECONDS = 86400


def _record(fields: Mapping[Any, Any]) -> BreakerRecord:
    if not fields:
        return BreakerRecord()
    trial = fields.get(b"trial_since", b"")
    return BreakerRecord(
        failures=int(fields[b"failures"]),
        open_until=float(fields[b"open_until"]),
        trial_since=float(trial) if trial else None,
    )


def _fields(record: BreakerRecord) -> dict[Any, Any]:
    # repr: the exact float back, which `Breakers.release` compares with the trial it frees.
    trial = "" if record.trial_since is None else repr(record.trial_since)
    return {"failures": str(record.failures), "open_until": repr(record.open_until), "trial_since": trial}


class RedisBreakerStore:
    """BreakerStore shared through Redis, with this process's records as the fallback."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._prefix = f"{link.prefix}:breaker:"
        self._local = MemoryBreakerStore()
        # One per upstream and per (upstream, model) pair: as many as the configuration names.
        self._turns: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def read(self, name: str) -> BreakerRecord:
        if not self._link.up:
            return await self._local.read(name)
        try:
            return _record(await self._link.client.hgetall(self._prefix + name))
        except UNREACHABLE as exc:
            self._link.failed(exc)
            return await self._local.read(name)

    async def update(self, name: str, change: Callable[[BreakerRecord], BreakerRecord]) -> BreakerRecord:
        if not self._link.up:
            return await self._local.update(name, change)
        async with self._turns[name]:
            return await self._update(name, change)

    async def _update(self, name: str, change: Callable[[BreakerRecord], BreakerRecord]) -> BreakerRecord:
        key = self._prefix + name
        try:
            for _ in range(MAX_TRIES):
                async with self._link.client.pipeline(transaction=True) as pipe:
                    try:
                        await pipe.watch(key)
                        record = change(_record(await pipe.hgetall(key)))
                        pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
                        pipe.hset(key, mapping=_fields(record))
                        pipe.expire(key, IDLE_SECONDS)
                        await pipe.execute()
                        return record
                    except WatchError:
                        continue  # another instance changed it first: read it again
        except UNREACHABLE as exc:
            self._link.failed(exc)
        return await self._local.update(name, change)
