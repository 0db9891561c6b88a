"""Each instance's breaker gauge follows the shared breaker: two instances' breakers on one real redis-server.

Every read of a breaker (a request's, the probe's, /readyz's) sets the reading instance's gauge to
the state it read, so no instance keeps reporting a state another instance has since changed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from server.shared.breakers import RedisBreakerStore
from server.shared.link import RedisLink
from server.upstreams.breaker import Admission, Breakers, BreakerState
from tests.conftest import make_settings
from tests.support.servers import RedisServer

SECONDS = 10  # a bound far from any real wait here
COOLDOWN = 30.0


class Clock:
    """A wall clock the test moves by hand, shared by both instances' breakers."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Instance:
    """One instance's breakers and what its `sluice_upstream_breaker_state` gauge says per upstream."""

    breakers: Breakers
    link: RedisLink
    gauge: dict[str, BreakerState]

    def reports(self, name: str) -> BreakerState:
        """What the gauge says of `name` now."""
        return self.gauge[name]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def instances(redis_server: RedisServer, clock: Clock) -> AsyncIterator[list[Instance]]:
    started: list[Instance] = []
    for _ in range(2):
        link = RedisLink(make_settings(redis={"url": redis_server.url}).redis)
        link.start()  # its health loop brings it back up after an outage
        gauge: dict[str, BreakerState] = {}
        breakers = Breakers(
            RedisBreakerStore(link), failures=3, cooldown=COOLDOWN, clock=clock, on_change=gauge.__setitem__
        )
        started.append(Instance(breakers, link, gauge))
    yield started
    for instance in started:
        await instance.link.close()


async def open_breaker(instance: Instance, name: str) -> None:
    for _ in range(3):
        await instance.breakers.failed(name)


async def test_an_instance_that_reads_a_breaker_another_opened_reports_it_open(instances: list[Instance]) -> None:
    first, second = instances
    await open_breaker(first, "upstream-a")
    assert await second.breakers.acquire("upstream-a") is Admission.REFUSED
    assert second.reports("upstream-a") is BreakerState.OPEN


async def test_readiness_reading_a_breaker_another_opened_reports_it_open(instances: list[Instance]) -> None:
    first, second = instances
    await open_breaker(first, "upstream-b")
    assert await second.breakers.state("upstream-b") is BreakerState.OPEN
    assert second.reports("upstream-b") is BreakerState.OPEN


async def test_an_instance_reports_closed_a_breaker_it_opened_once_it_reads_it_closed_by_another(
    instances: list[Instance], clock: Clock
) -> None:
    first, second = instances
    await open_breaker(first, "upstream-c")
    assert first.reports("upstream-c") is BreakerState.OPEN
    clock.now += COOLDOWN + 1
    trials = await second.breakers.admit("upstream-c", "m")  # the other instance's probe or request
    assert trials
    await second.breakers.answered("upstream-c", "m")
    assert await first.breakers.acquire("upstream-c") is Admission.ALLOWED  # its next request
    assert first.reports("upstream-c") is BreakerState.CLOSED


async def test_a_breaker_opened_while_redis_was_down_is_reported_closed_once_redis_is_back(
    instances: list[Instance], redis_server: RedisServer
) -> None:
    first = instances[0]
    redis_server.kill()
    await open_breaker(first, "upstream-d")  # counted in this instance's memory meanwhile
    assert first.reports("upstream-d") is BreakerState.OPEN
    redis_server.start()
    assert await first.link.wait_up(SECONDS)
    assert await first.breakers.acquire("upstream-d") is Admission.ALLOWED  # the shared record: closed
    assert first.reports("upstream-d") is BreakerState.CLOSED
