"""LimitStore on Redis: one count per key across every instance, local limits while Redis is away.

The buckets and their Lua scripts are in limits.py. With Redis unreachable, `fail_open` (the
default) counts in this process meanwhile, so a key gets its limit per instance for that time;
otherwise requests are refused with 503 until Redis answers.
"""

from __future__ import annotations

import asyncio
import math

from ..auth.limits import WINDOW_SECONDS, Decision, Exceeded, KeyLimits, MemoryLimitStore, Usage, taken
from ..errors import ServiceUnavailableError
from .limits import LimitsUnavailableError, RedisLimitBuckets
from .link import RedisLink

# The most a usage read (the dashboard's) may wait for Redis before its numbers show as unknown.
USAGE_SECONDS = 0.5


class RedisLimitStore:
    """LimitStore whose counts live in Redis."""

    def __init__(self, link: RedisLink, *, retry_after: int) -> None:
        self._link = link
        self._buckets = RedisLimitBuckets(link)
        self._local = MemoryLimitStore()
        self._fail_open = link.settings.fail_open
        self._retry_after = retry_after

    async def take(self, name: str, limits: KeyLimits, *, requests: int, tokens: int, streams: int) -> Decision:
        if self._link.up:
            try:
                taken = await self._buckets.take(
                    name,
                    rpm=limits.rpm,
                    tpm=limits.tpm,
                    max_streams=limits.max_streams,
                    requests=requests,
                    tokens=tokens,
                    streams=streams,
                )
            except LimitsUnavailableError:
                pass
            else:
                return Decision(
                    exceeded=Exceeded(taken.exceeded) if taken.exceeded else None,
                    limits=limits,
                    remaining_requests=max(0, math.floor(taken.requests_level)) if limits.rpm else 0,
                    remaining_tokens=max(0, math.floor(taken.tokens_level)) if limits.tpm else 0,
                    reset_requests=_until_full(taken.requests_level, limits.rpm),
                    reset_tokens=_until_full(taken.tokens_level, limits.tpm),
                    retry_after=taken.retry_after,
                )
        if not self._fail_open:
            raise ServiceUnavailableError(
                "Sluice cannot reach Redis to count this key's use; retry shortly.",
                code="limits_unavailable",
                headers={"Retry-After": str(self._retry_after)},
            )
        return await self._local.take(name, limits, requests=requests, tokens=tokens, streams=streams)

    async def give_back(self, name: str, limits: KeyLimits, *, tokens: int, streams: int) -> None:
        try:
            await self._buckets.give_back(name, tpm=limits.tpm, tokens=tokens, streams=streams)
        except LimitsUnavailableError:
            await self._local.give_back(name, limits, tokens=tokens, streams=streams)

    async def usage(self, name: str, limits: KeyLimits) -> Usage | None:
        # Only the dashboard reads this: a slow or absent Redis makes it "unknown", never a wait.
        if not self._link.up:
            return None
        try:
            async with asyncio.timeout(USAGE_SECONDS):
                requests, tokens, streams = await self._buckets.levels(name, rpm=limits.rpm, tpm=limits.tpm)
        except (LimitsUnavailableError, TimeoutError):
            return None
        return Usage(streams=streams, requests=taken(requests, limits.rpm), tokens=taken(tokens, limits.tpm))


def _until_full(level: float, capacity: int) -> float:
    return max(0.0, (capacity - level) * WINDOW_SECONDS / capacity) if capacity else 0.0
