"""A 429 holds its model for the upstream's wait and no more, and a client held off hears a 429.

Five 429s a few seconds apart (the routing's own retries, under load) used to count as failures and
shut the model for the whole breaker cooldown; clients then got 503s for 30 s from an upstream that
had asked for 250 ms. A spent quota (`insufficient_quota`) is not asked again, and the client is
told not to retry it. The route cases run the gateway in-process in front of a fake aiohttp upstream.
"""

from __future__ import annotations

import pytest
from aiohttp import web

from server.upstreams.breaker import Admission, Breakers, MemoryBreakerStore
from tests.support.envelope import error_of
from tests.test_routing_units import Clock
from tests.test_upstream_errors import CALLS, COMPLETIONS, BuildGateway

V1 = CALLS["v1"]


def breakers(clock: Clock, *, on_rate_limit: bool = True) -> Breakers:
    return Breakers(MemoryBreakerStore(), failures=5, cooldown=30.0, clock=clock, on_rate_limit=on_rate_limit)


async def test_rate_limits_in_a_row_never_shut_a_model_for_the_cooldown() -> None:
    clock = Clock()
    b = breakers(clock)
    for _ in range(6):
        await b.failed("a", retry_after=0.25, rate_limited=True)
        clock.now += 1.6  # past each hold (1.5 s at the least)
    assert await b.acquire("a")


async def test_with_rate_limit_holds_off_a_429_opens_nothing_however_many_come() -> None:
    b = breakers(Clock(), on_rate_limit=False)
    for _ in range(6):
        await b.failed("a", rate_limited=True)
    assert await b.acquire("a")


async def test_other_failures_in_a_row_still_open_for_the_cooldown() -> None:
    clock = Clock()
    b = breakers(clock)
    for _ in range(5):
        await b.failed("a")
    clock.now += 29
    assert not await b.acquire("a")


async def at_trial_after_a_503_that_said_when() -> Breakers:
    """Breakers whose upstream "a" answered 503 with Retry-After: 2, and whose trial is now on its way."""
    clock = Clock()
    b = breakers(clock)
    await b.failed("a", retry_after=2.0)
    clock.now += 2.1
    assert await b.acquire("a") is Admission.TRIAL
    return b


async def test_a_failed_trial_that_says_when_holds_for_that_wait_not_the_cooldown() -> None:
    # A 503 with Retry-After at the trial too: the upstream asked for 2 s and was shut for 30.
    b = await at_trial_after_a_503_that_said_when()
    await b.failed("a", retry_after=2.0)

    assert await b.reopens_in("a") == pytest.approx(2.0)


async def test_a_failed_trial_that_says_nothing_reopens_for_the_cooldown() -> None:
    b = await at_trial_after_a_503_that_said_when()
    await b.failed("a")

    assert await b.reopens_in("a") == pytest.approx(30.0)


async def test_failures_that_say_when_still_open_for_the_cooldown_at_the_threshold() -> None:
    clock = Clock()
    b = breakers(clock)
    for _ in range(5):
        await b.failed("a", retry_after=2.0)
        clock.now += 2.1

    assert await b.reopens_in("a") == pytest.approx(30.0 - 2.1)


def limiting(calls: list[int], code: str, headers: dict[str, str]) -> web.Application:
    """An upstream that answers every chat request 429 with `code` and `headers`, counting them."""

    async def limit(request: web.Request) -> web.Response:
        await request.read()
        calls.append(1)
        body = {"error": {"message": "Limited.", "type": "requests", "param": None, "code": code}}
        return web.json_response(body, status=429, headers=headers)

    app = web.Application()
    app.router.add_post(COMPLETIONS, limit)
    return app


async def test_a_model_held_for_a_rate_limit_answers_429_with_the_wait(upstream_app_client: BuildGateway) -> None:
    calls: list[int] = []
    upstream = limiting(calls, "rate_limit_exceeded", {"retry-after": "3"})
    gateway = await upstream_app_client(upstream, routing={"breaker_on_rate_limit": True})
    await error_of(await gateway.post(V1.path, json=V1.body), 429)

    held = await gateway.post(V1.path, json=V1.body)

    error = await error_of(held, 429)
    assert error["code"] == "rate_limit_exceeded"
    assert held.headers["Retry-After"] == "3"
    assert len(calls) == 1  # held: the upstream was not asked again


async def test_a_spent_quota_is_not_asked_again_and_the_client_is_told_not_to_retry(
    upstream_app_client: BuildGateway,
) -> None:
    calls: list[int] = []
    upstream = limiting(calls, "insufficient_quota", {})
    gateway = await upstream_app_client(upstream, routing={"retries": 2, "breaker_on_rate_limit": False})

    response = await gateway.post(V1.path, json=V1.body)

    error = await error_of(response, 429)
    assert error["code"] == "insufficient_quota"
    assert response.headers["x-should-retry"] == "false"
    assert len(calls) == 1


async def test_a_spent_quota_is_told_as_such_again_with_rate_limit_holds_on(upstream_app_client: BuildGateway) -> None:
    # Held like any 429, the next client heard a retryable `rate_limit_exceeded`, and its SDK retried.
    calls: list[int] = []
    upstream = limiting(calls, "insufficient_quota", {})
    gateway = await upstream_app_client(upstream, routing={"breaker_on_rate_limit": True})
    await error_of(await gateway.post(V1.path, json=V1.body), 429)

    again = await gateway.post(V1.path, json=V1.body)

    assert (await error_of(again, 429))["code"] == "insufficient_quota"
    assert again.headers["x-should-retry"] == "false"
