"""Circuit breakers shared through a real redis-server: two stores on two links stand for two instances."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from server.shared.breakers import RedisBreakerStore
from server.shared.link import RedisLink
from server.upstreams.breaker import TRIAL_LEASE_SECONDS, Admission, BreakerRecord, Breakers, BreakerState
from server.upstreams.failures import status_failure
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


async def test_a_trial_one_instance_ended_with_a_client_error_is_free_for_the_other(
    stores: list[RedisBreakerStore], clock: Clock
) -> None:
    first, second = (breakers(store, clock) for store in stores)
    for _ in range(3):
        await first.failed("upstream-e")
    clock.now += 31
    trials = await first.admit("upstream-e", "m")
    assert [name for name, _ in trials or []] == ["upstream-e"]
    assert await second.admit("upstream-e", "m") is None  # the trial is taken
    await first.judge("upstream-e", "m", status_failure(400, {}, b""), trials or [])
    assert await second.state("upstream-e") is BreakerState.HALF_OPEN
    assert await second.admit("upstream-e", "m") is not None  # the next request is the trial at once


async def test_a_hold_trial_one_instance_ended_with_a_5xx_is_free_for_the_other(
    stores: list[RedisBreakerStore], clock: Clock
) -> None:
    first, second = (breakers(store, clock) for store in stores)
    await first.judge("upstream-f", "m", status_failure(429, {"retry-after": "1"}, b""))
    clock.now += 1.6
    trials = await first.admit("upstream-f", "m")
    assert len(trials or []) == 1  # the model's hold
    await first.judge("upstream-f", "m", status_failure(500, {}, b""), trials or [])
    assert await second.admit("upstream-f", "m") is not None


async def test_freeing_a_trial_whose_lease_ran_out_leaves_the_later_trial_alone(
    stores: list[RedisBreakerStore], clock: Clock
) -> None:
    """The trial's start survives the round trip through Redis exactly: only the trial begun then is freed."""
    first, second = (breakers(store, clock) for store in stores)
    for _ in range(3):
        await first.failed("upstream-g")
    clock.now += 31
    late = await first.admit("upstream-g", "m")
    clock.now += TRIAL_LEASE_SECONDS + 1
    assert await second.admit("upstream-g", "m") is not None  # a new trial, on the other instance
    await first.end_trials(late or [])
    assert await first.admit("upstream-g", "m") is None  # the other instance's trial still runs
