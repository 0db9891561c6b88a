"""Circuit breakers shared through a real redis-server: two stores on two links stand for two instances."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from server.shared.breakers import RedisBreakerStore
from server.shared.link import RedisLink
from server.upstreams.breaker import Admission, BreakerRecord, Breakers, BreakerState
from tests.conftest import make_settings
from tests.support.servers import RedisServer

MakeBreakers = Callable[..., Breakers]


class Clock:
    """A wall clock the test moves by hand, shared by both instances' breakers."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def stores(redis_server: RedisServer) -> AsyncIterator[list[RedisBreakerStore]]:
    links = [RedisLink(make_settings(redis={"url": redis_server.url}).redis) for _ in range(2)]
    yield [RedisBreakerStore(link) for link in links]
    for link in links:
        await link.close()


def breakers(store: RedisBreakerStore, clock: Clock) -> Breakers:
    return Breakers(store, failures=3, cooldown=30.0, clock=clock)


async def test_failures_seen_by_two_instances_open_the_breaker_for_both(
    stores: list[RedisBreakerStore], clock: Clock
) -> None:
    first, second = (breakers(store, clock) for store in stores)
    await first.failed("upstream-a")
    await second.failed("upstream-a")
    assert await first.acquire("upstream-a") is Admission.ALLOWED
    await first.failed("upstream-a")  # the third in a row, counted across both
    assert await second.state("upstream-a") is BreakerState.OPEN
    assert await second.acquire("upstream-a") is Admission.REFUSED


async def test_a_half_open_breaker_gives_its_one_trial_to_one_instance_only(
    stores: list[RedisBreakerStore], clock: Clock
) -> None:
    first, second = (breakers(store, clock) for store in stores)
    for _ in range(3):
        await first.failed("upstream-b")
    clock.now += 31
    admissions = await asyncio.gather(*(b.acquire("upstream-b") for b in (first, second) * 10))
    assert admissions.count(Admission.TRIAL) == 1
    assert admissions.count(Admission.REFUSED) == 19


async def test_concurrent_updates_from_two_instances_are_each_applied_once(stores: list[RedisBreakerStore]) -> None:
    def count(record: BreakerRecord) -> BreakerRecord:
        return BreakerRecord(record.failures + 1, record.open_until, record.trial_since)

    await asyncio.gather(*(store.update("upstream-c", count) for store in stores * 25))
    assert (await stores[0].read("upstream-c")).failures == 50


async def test_with_redis_down_each_instance_keeps_breakers_of_its_own(
    stores: list[RedisBreakerStore], clock: Clock, redis_server: RedisServer
) -> None:
    first = breakers(stores[0], clock)
    redis_server.kill()
    for _ in range(3):
        await first.failed("upstream-d")
    assert await first.acquire("upstream-d") is Admission.REFUSED
