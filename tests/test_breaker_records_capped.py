"""Shared breaker records an older, uncapped Sluice left in Redis: an hour-long hold is read as at most
the longest this version opens a breaker for (MAX_RETRY_AFTER_SECONDS, or a longer cooldown).

A real redis-server; the old record is written as such a version wrote it (a hash of failures,
open_until, trial_since). Two stores on two links stand for two instances, their clocks moved by hand.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
import redis.asyncio as aioredis

from server.shared.breakers import RedisBreakerStore
from server.shared.link import RedisLink
from server.upstreams.breaker import Admission, Breakers
from server.upstreams.failures import MAX_RETRY_AFTER_SECONDS
from tests.conftest import make_settings
from tests.support.processes import Simulator, start_gateway
from tests.support.servers import RedisServer

HOUR = 3600.0
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi\n#sim tokens=2"}]}


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def links(redis_server: RedisServer) -> AsyncIterator[list[RedisLink]]:
    made = [RedisLink(make_settings(redis={"url": redis_server.url}).redis) for _ in range(2)]
    yield made
    for link in made:
        await link.close()


async def leave_old_record(redis_url: str, key: str, open_until: float) -> None:
    """Write `key` as an older Sluice did after a Retry-After it did not cap: open until `open_until`."""
    async with aioredis.Redis.from_url(redis_url) as redis:
        await redis.hset(key, mapping={"failures": "1", "open_until": repr(open_until), "trial_since": ""})


def breaker_key(link: RedisLink, name: str) -> str:
    return f"{link.prefix}:breaker:{name}"


def breakers_on(link: RedisLink, clock: Clock, failures: int = 3, cooldown: float = 30.0) -> Breakers:
    """An instance's breakers: this version's, sharing their records through `link`."""
    return Breakers(RedisBreakerStore(link), failures=failures, cooldown=cooldown, clock=clock)


async def breakers_on_an_old_hold(redis_server: RedisServer, link: RedisLink, name: str, clock: Clock) -> Breakers:
    """`breakers_on(link, clock)`, once an older Sluice left `name` held open for an hour from `clock`'s now."""
    await leave_old_record(redis_server.url, breaker_key(link, name), clock.now + HOUR)
    return breakers_on(link, clock)


async def test_a_breaker_an_older_sluice_held_open_for_an_hour_gives_its_trial_once_the_cap_passed(
    links: list[RedisLink], redis_server: RedisServer
) -> None:
    clock = Clock(1_000_000.0)
    breakers = await breakers_on_an_old_hold(redis_server, links[0], "up-a", clock)
    assert await breakers.acquire("up-a") is Admission.REFUSED
    clock.now += MAX_RETRY_AFTER_SECONDS
    assert await breakers.acquire("up-a") is Admission.TRIAL


async def test_the_cut_an_instance_reads_is_the_one_every_instance_reads(
    links: list[RedisLink], redis_server: RedisServer
) -> None:
    """Written back when first read: another instance, reading later, reopens it at the same moment."""
    first_clock = Clock(1_000_000.0)
    first = await breakers_on_an_old_hold(redis_server, links[0], "up-b", first_clock)
    assert await first.reopens_in("up-b") == MAX_RETRY_AFTER_SECONDS
    second = breakers_on(links[1], Clock(first_clock.now + 20))
    assert await second.reopens_in("up-b") == MAX_RETRY_AFTER_SECONDS - 20


async def test_a_rate_limit_counted_on_an_old_hour_long_hold_holds_it_for_the_cap_only(
    links: list[RedisLink], redis_server: RedisServer
) -> None:
    """An update (here a 429's hold, which keeps the later of two ends) starts from the cut record too."""
    clock = Clock(1_000_000.0)
    breakers = await breakers_on_an_old_hold(redis_server, links[0], "up-c", clock)
    await breakers.failed("up-c", retry_after=1.0, rate_limited=True)
    clock.now += MAX_RETRY_AFTER_SECONDS
    assert await breakers.acquire("up-c") is Admission.TRIAL


async def test_a_cooldown_longer_than_the_retry_after_cap_is_kept_whole(links: list[RedisLink]) -> None:
    clock = Clock(1_000_000.0)
    first, second = (breakers_on(link, clock, failures=1, cooldown=120.0) for link in links)
    await first.failed("up-d")
    assert await second.reopens_in("up-d") == 120.0


async def test_a_gateway_on_an_hour_long_hold_an_older_sluice_left_says_retry_within_the_cap(
    simulator: Simulator, redis_server: RedisServer
) -> None:
    """`python run.py` with that Redis: the 503 for its only upstream says when it is tried again."""
    settings = make_settings(redis={"url": redis_server.url})
    key = f"{settings.redis.key_prefix}:breaker:default"  # the upstream of AI_INTEGRATIONS_OPENAI_BASE_URL
    await leave_old_record(redis_server.url, key, time.time() + HOUR)
    with start_gateway(upstream=simulator, env={"SLUICE_REDIS_URL": redis_server.url}) as gateway:
        async with aiohttp.ClientSession() as http:
            async with http.post(gateway.url + "/v1/chat/completions", json=CHAT) as response:
                body = await response.json()
                assert (response.status, body["error"]["code"]) == (503, "upstream_unavailable")
                assert 1 <= int(response.headers["Retry-After"]) <= MAX_RETRY_AFTER_SECONDS
