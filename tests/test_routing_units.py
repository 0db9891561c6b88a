"""The routing's parts with a fake clock and a fake sleep: breaker, backoff, pool, failure table, attempt loop."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from typing import Any, cast

import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from server.access import RequestRecord
from server.errors import UpstreamError
from server.metrics import Metrics
from server.settings import RoutingSettings, UpstreamEntry
from server.upstreams import attempts
from server.upstreams.attempts import Upstream
from server.upstreams.backoff import RetryBudget, jitter
from server.upstreams.breaker import (
    TRIAL_LEASE_SECONDS,
    Admission,
    BreakerRecord,
    Breakers,
    BreakerState,
    MemoryBreakerStore,
    Trial,
)
from server.upstreams.failures import connect_failure, retry_after_seconds, status_failure, timeout_failure
from server.upstreams.hedging import hedged
from server.upstreams.pool import Pool
from server.upstreams.probe import Prober


class Clock:
    """A clock tests move by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breakers(clock: Clock, failures: int = 3, cooldown: float = 30.0, on_rate_limit: bool = True) -> Breakers:
    return Breakers(
        MemoryBreakerStore(), failures=failures, cooldown=cooldown, clock=clock, on_rate_limit=on_rate_limit
    )


def names(trials: list[Trial] | None) -> list[str] | None:
    """The breakers whose trial an admission holds (the pair's written upstream/model); None when refused."""
    return None if trials is None else [name.replace("\x00", "/") for name, _ in trials]


# --- breaker ---------------------------------------------------------------------------------


async def test_breaker_opens_after_the_configured_consecutive_failures() -> None:
    clock = Clock()
    b = breakers(clock, failures=3)
    for _ in range(2):
        await b.failed("a")
    assert await b.state("a") is BreakerState.CLOSED
    await b.failed("a")
    assert await b.state("a") is BreakerState.OPEN
    assert not await b.acquire("a")


async def test_a_success_resets_the_consecutive_failures() -> None:
    clock = Clock()
    b = breakers(clock, failures=2)
    await b.failed("a")
    await b.succeeded("a")
    await b.failed("a")
    assert await b.state("a") is BreakerState.CLOSED


async def test_an_answered_attempt_resets_the_failures_counted_on_its_upstream_and_pair() -> None:
    """Catches: `answered` skipping its breakers whenever none is open (server/upstreams/breaker.py)."""
    clock = Clock()
    b = breakers(clock, failures=2)
    await b.failed("a")
    await b.answered("a", "m")
    await b.failed("a")
    assert await b.state("a") is BreakerState.CLOSED


async def test_after_the_cooldown_exactly_one_trial_passes() -> None:
    clock = Clock()
    b = breakers(clock, failures=1, cooldown=30)
    await b.failed("a")
    clock.now += 29.9
    assert not await b.acquire("a")
    clock.now += 0.2
    assert await b.state("a") is BreakerState.HALF_OPEN
    assert await b.acquire("a")
    assert not await b.acquire("a")


async def test_a_failed_trial_opens_the_breaker_for_another_cooldown() -> None:
    clock = Clock()
    b = breakers(clock, failures=1, cooldown=30)
    await b.failed("a")
    clock.now += 31
    assert await b.acquire("a")
    await b.failed("a")
    clock.now += 29
    assert not await b.acquire("a")
    clock.now += 2
    assert await b.acquire("a")


async def test_a_successful_trial_closes_the_breaker() -> None:
    clock = Clock()
    b = breakers(clock, failures=1, cooldown=30)
    await b.failed("a")
    clock.now += 31
    assert await b.acquire("a")
    await b.succeeded("a")
    assert await b.state("a") is BreakerState.CLOSED
    assert await b.acquire("a")
    assert await b.acquire("a")


async def test_a_retry_after_opens_the_breaker_for_that_long_only() -> None:
    clock = Clock()
    b = breakers(clock, failures=5, cooldown=30)
    await b.failed("a", retry_after=4)
    assert not await b.acquire("a")
    assert await b.reopens_in("a") == pytest.approx(4)
    clock.now += 4.01
    assert await b.acquire("a")


async def test_open_after_consecutive_failures_lasts_the_longer_of_retry_after_and_cooldown() -> None:
    clock = Clock()
    b = breakers(clock, failures=1, cooldown=30)
    await b.failed("a", retry_after=50)
    clock.now += 40
    assert not await b.acquire("a")
    clock.now += 10.1
    assert await b.acquire("a")


async def test_a_429_without_retry_after_holds_the_upstream_for_one_and_a_half_seconds() -> None:
    clock = Clock()
    b = breakers(clock)
    await b.failed("a", rate_limited=True)
    clock.now += 1.4
    assert not await b.acquire("a")
    clock.now += 0.2
    assert await b.acquire("a")


async def test_with_rate_limit_breaking_off_a_retry_after_opens_nothing() -> None:
    b = breakers(Clock(), on_rate_limit=False)
    await b.failed("a", retry_after=10, rate_limited=True)
    assert await b.acquire("a")


async def test_breaker_changes_are_reported() -> None:
    seen: list[tuple[str, BreakerState]] = []
    clock = Clock()
    b = Breakers(MemoryBreakerStore(), failures=1, cooldown=1, clock=clock, on_change=lambda n, s: seen.append((n, s)))
    await b.failed("a")
    clock.now += 2
    await b.acquire("a")
    await b.succeeded("a")
    assert seen == [("a", BreakerState.OPEN), ("a", BreakerState.HALF_OPEN), ("a", BreakerState.CLOSED)]


async def test_a_failed_trial_is_reported_open_again() -> None:
    """Catches: a trial's reopening left unreported, its gauge at half-open for the cooldown (breaker.py)."""
    seen: list[tuple[str, BreakerState]] = []
    clock = Clock()
    b = Breakers(MemoryBreakerStore(), failures=1, cooldown=1, clock=clock, on_change=lambda n, s: seen.append((n, s)))
    await b.failed("a")
    clock.now += 2
    await b.judge("a", "m", fail(500), await b.admit("a", "m") or [])
    clock.now += 2
    await b.judge("a", "m", fail(400), await b.admit("a", "m") or [])  # freed: still half-open
    assert seen == [
        ("a", BreakerState.OPEN),
        ("a", BreakerState.HALF_OPEN),
        ("a", BreakerState.OPEN),
        ("a", BreakerState.HALF_OPEN),
    ]


# --- backoff ---------------------------------------------------------------------------------


def error(reason: str, retry_after: float | None = None) -> UpstreamError:
    e = UpstreamError("x")
    e.reason = reason
    e.retry_after = retry_after
    return e


def test_full_jitter_stays_within_a_quarter_second_doubling_to_four() -> None:
    rng = random.Random(1)
    for retry, ceiling in [(0, 0.25), (1, 0.5), (2, 1.0), (4, 4.0), (9, 4.0)]:
        samples = [jitter(retry, rng) for _ in range(500)]
        assert min(samples) >= 0
        assert max(samples) <= ceiling
        assert max(samples) > ceiling * 0.8  # full jitter: the whole range is used


def test_retry_after_that_fits_the_budget_is_honoured() -> None:
    assert RetryBudget(10).delay_for(error("503", retry_after=3), 0) == 3


def test_retry_after_beyond_the_budget_means_no_retry() -> None:
    budget = RetryBudget(10)
    budget.spend(8)
    assert budget.delay_for(error("429", retry_after=3), 0) is None


def test_a_429_is_never_retried_sooner_than_one_and_a_half_seconds() -> None:
    assert RetryBudget(10).delay_for(error("429"), 0) == 1.5
    assert RetryBudget(10).delay_for(error("429", retry_after=0.2), 0) == 1.5


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [({"retry-after": "7"}, 7.0), ({"retry-after-ms": "250"}, 0.25), ({"retry-after": "soon"}, None), ({}, None)],
)
def test_retry_after_headers_are_read_in_seconds(headers: dict[str, str], seconds: float | None) -> None:
    assert retry_after_seconds(headers) == seconds


def test_retry_after_as_an_http_date_counts_from_now() -> None:
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480) == 10


# --- the failure table -----------------------------------------------------------------------


def body(code: str | None, message: str = "m") -> bytes:
    import orjson

    return orjson.dumps({"error": {"message": message, "type": "t", "param": None, "code": code}})


@pytest.mark.parametrize(
    ("status", "code", "client_status", "client_code"),
    [
        (400, "context_length_exceeded", 400, "context_length_exceeded"),
        (401, "invalid_api_key", 502, "upstream_auth_failed"),
        (403, None, 502, "upstream_auth_failed"),
        (404, None, 404, "upstream_rejected"),
        (408, None, 504, "upstream_timeout"),
        (429, None, 429, "rate_limit_exceeded"),
        (500, None, 502, "upstream_failed"),
        (503, "overloaded", 503, "overloaded"),
        (529, None, 503, "upstream_overloaded"),
    ],
)
def test_status_table(status: int, code: str | None, client_status: int, client_code: str) -> None:
    mapped = status_failure(status, {"retry-after": "2"}, body(code))
    assert (mapped.status, mapped.code) == (client_status, client_code)


def test_429_and_503_pass_retry_after_on() -> None:
    assert status_failure(429, {"retry-after": "2"}, b"").headers == {"Retry-After": "2", "retry-after-ms": "2000"}
    # The OpenAI SDKs read retry-after-ms first: the upstream's precision is kept there.
    assert status_failure(503, {"retry-after-ms": "1500"}, b"").headers == {
        "Retry-After": "2",
        "retry-after-ms": "1500",
    }


def test_auth_failures_never_pass_the_upstream_message_on() -> None:
    assert "sk-" not in status_failure(401, {}, body("invalid_api_key", "Incorrect key sk-abc")).message


def test_connection_failure_is_502_and_timeout_504() -> None:
    assert (connect_failure().status, timeout_failure().status) == (502, 504)


# --- pool ------------------------------------------------------------------------------------


class FakeClient:
    """An upstream client that answers from a script: each entry an error to raise or a result."""

    def __init__(self, name: str, script: list[Any] | None = None, weight: float = 1, models: tuple[str, ...] = ("*",)):
        self.name = name
        self.entry = UpstreamEntry(name=name, base_url="http://x", api_key=SecretStr("k"), weight=weight, models=models)
        self.in_flight = 0
        self.full = False
        self.script = list(script or [])
        self.calls: list[str] = []

    async def complete(self, body: dict[str, Any], request_id: str, record: Any = None) -> bytes:
        self.calls.append(body["model"])
        step = self.script.pop(0) if self.script else b"ok"
        if isinstance(step, Exception):
            raise step
        return bytes(step)


def test_power_of_two_choices_picks_the_less_busy_of_two() -> None:
    busy, idle = cast(Any, FakeClient("busy")), cast(Any, FakeClient("idle"))
    busy.in_flight = 5
    pool = Pool([busy, idle], random.Random(0))
    assert all(pool.pick([busy, idle]) is idle for _ in range(50))


def test_weights_share_the_load() -> None:
    heavy, light = cast(Any, FakeClient("heavy", weight=3)), cast(Any, FakeClient("light", weight=1))
    pool = Pool([heavy, light], random.Random(0))
    picks = [pool.pick([heavy, light]) for _ in range(400)]
    # Equal in-flight counts: the first draw (by weight) wins ties, so heavy gets about 3 in 4.
    assert 240 < sum(p is heavy for p in picks) < 360


def test_an_upstream_at_its_concurrency_cap_is_skipped() -> None:
    full, free = cast(Any, FakeClient("full")), cast(Any, FakeClient("free"))
    full.full = True
    pool = Pool([full, free])
    assert pool.pick([full, free]) is free


def test_a_lone_upstream_at_its_concurrency_cap_is_not_picked() -> None:
    """Catches: `Pool.pick` ignoring the cap when only one candidate is left (server/upstreams/pool.py)."""
    full = cast(Any, FakeClient("full"))
    full.full = True
    assert Pool([full]).pick([full]) is None


# --- the attempt loop ------------------------------------------------------------------------


def routing(**values: Any) -> RoutingSettings:
    defaults: dict[str, Any] = {
        "retries": 2,
        "retry_budget_seconds": 10,
        "hedge_after_seconds": 0,
        "breaker_failures": 5,
        "breaker_cooldown_seconds": 30,
        "breaker_on_rate_limit": True,
    }
    return RoutingSettings(**{**defaults, **values})


def router(
    clients: list[FakeClient],
    sleeps: list[float],
    clock: Clock | None = None,
    store: MemoryBreakerStore | None = None,
    metrics: Metrics | None = None,
    **values: Any,
) -> Upstream:
    clock = clock or Clock()

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.now += seconds

    settings = routing(**values)
    b = Breakers(
        store or MemoryBreakerStore(),
        failures=settings.breaker_failures,
        cooldown=settings.breaker_cooldown_seconds,
        clock=clock,
    )
    pool = Pool(clients, random.Random(0))  # type: ignore[arg-type]
    return Upstream(pool, b, settings, metrics or Metrics(), sleep=sleep, rng=random.Random(0))


def fail(status: int, retry_after: str | None = None, code: str | None = None) -> UpstreamError:
    return status_failure(status, {"retry-after": retry_after} if retry_after else {}, body(code))


Complete = Callable[..., Any]


async def test_a_500_then_a_200_is_one_retry_after_a_jittered_wait() -> None:
    sleeps: list[float] = []
    up = FakeClient("a", [fail(500)])
    record = RequestRecord(started=0)
    assert await router([up], sleeps).complete({"model": "m"}, "r", record) == b"ok"
    assert len(up.calls) == 2
    assert len(sleeps) == 1
    assert 0 <= sleeps[0] <= 0.25
    assert [a["status"] for a in record.attempts] == [500, 200]


async def test_retries_stop_after_the_configured_number() -> None:
    sleeps: list[float] = []
    up = FakeClient("a", [fail(500)] * 5)
    with pytest.raises(UpstreamError) as caught:
        await router([up], sleeps, retries=2).complete({"model": "m"}, "r")
    assert caught.value.status == 502
    assert len(up.calls) == 3


async def test_a_retry_after_is_waited_for_when_it_fits_the_budget() -> None:
    sleeps: list[float] = []
    up = FakeClient("a", [fail(429, "3")])
    assert await router([up], sleeps).complete({"model": "m"}, "r") == b"ok"
    assert sleeps == [3]


async def test_a_retry_after_beyond_the_budget_returns_the_429_at_once() -> None:
    sleeps: list[float] = []
    up = FakeClient("a", [fail(429, "30")])
    with pytest.raises(UpstreamError) as caught:
        await router([up], sleeps).complete({"model": "m"}, "r")
    assert (caught.value.status, caught.value.headers["Retry-After"]) == (429, "30")
    assert sleeps == []
    assert len(up.calls) == 1


async def test_the_budget_caps_the_total_wait() -> None:
    sleeps: list[float] = []
    up = FakeClient("a", [fail(503, "4")] * 5)
    with pytest.raises(UpstreamError):
        await router([up], sleeps, retries=5, retry_budget_seconds=10).complete({"model": "m"}, "r")
    assert sleeps == [4, 4]


@pytest.mark.parametrize("status", [400, 404, 413, 422])
async def test_a_client_error_is_never_retried(status: int) -> None:
    sleeps: list[float] = []
    up = FakeClient("a", [fail(status)])
    with pytest.raises(UpstreamError):
        await router([up], sleeps).complete({"model": "m"}, "r")
    assert len(up.calls) == 1


async def test_a_failed_upstream_hands_over_to_another_of_the_pool_without_waiting() -> None:
    sleeps: list[float] = []
    a, b = FakeClient("a", [fail(500)]), FakeClient("b", [fail(500)])
    result = await router([a, b], sleeps).complete({"model": "m"}, "r")
    assert result == b"ok"
    assert len(a.calls) + len(b.calls) == 3
    assert len(sleeps) == 1  # only the third attempt, back on an upstream that failed, waited


async def test_the_first_attempt_goes_to_the_less_busy_upstream_of_the_pool() -> None:
    """Catches: the attempt loop taking a candidate without the pool's pick (server/upstreams/attempts.py)."""
    busy, idle = FakeClient("busy"), FakeClient("idle")
    busy.in_flight = 5
    upstream = router([busy, idle], [])
    for _ in range(10):
        await upstream.complete({"model": "m"}, "r")
    assert (len(busy.calls), len(idle.calls)) == (0, 10)


async def test_a_silent_upstream_is_not_asked_again() -> None:
    sleeps: list[float] = []
    up = FakeClient("a", [timeout_failure("header_timeout")])
    with pytest.raises(UpstreamError) as caught:
        await router([up], sleeps).complete({"model": "m"}, "r")
    assert caught.value.code == "header_timeout"
    assert len(up.calls) == 1


async def test_an_exhausted_model_falls_back_to_the_next_of_its_chain() -> None:
    sleeps: list[float] = []
    primary = FakeClient("a", [fail(500)] * 3, models=("big",))
    backup = FakeClient("b", [], models=("small",))
    record = RequestRecord(started=0)
    assert await router([primary, backup], sleeps, fallbacks={"big": ("small",)}).complete(
        {"model": "big"}, "r", record
    )
    assert backup.calls == ["small"]
    assert record.extra == {"upstream": "b", "served_model": "small"}


async def test_context_length_exceeded_takes_the_context_window_chain_not_the_fallbacks() -> None:
    sleeps: list[float] = []
    up = FakeClient("a", [fail(400, code="context_length_exceeded")])
    r = router([up], sleeps, fallbacks={"*": ("small",)}, context_window_fallbacks={"big": ("long",)})
    await r.complete({"model": "big"}, "r")
    assert up.calls == ["big", "long"]


async def test_content_policy_violation_never_falls_back() -> None:
    up = FakeClient("a", [fail(400, code="content_policy_violation")])
    with pytest.raises(UpstreamError) as caught:
        await router([up], [], fallbacks={"*": ("small",)}).complete({"model": "big"}, "r")
    assert caught.value.code == "content_policy_violation"
    assert up.calls == ["big"]


async def test_a_fallback_the_request_may_not_use_is_skipped_for_the_next_allowed_one() -> None:
    up = FakeClient("a", [fail(500)] * 3)
    r = router([up], [], fallbacks={"big": ("forbidden", "small")})
    assert await r.complete({"model": "big"}, "r", allows=lambda model: model != "forbidden") == b"ok"
    assert up.calls == ["big", "big", "big", "small"]


async def test_a_context_window_fallback_the_request_may_not_use_leaves_the_models_own_error() -> None:
    up = FakeClient("a", [fail(400, code="context_length_exceeded")])
    r = router([up], [], context_window_fallbacks={"big": ("long",)})
    with pytest.raises(UpstreamError) as caught:
        await r.complete({"model": "big"}, "r", allows=lambda model: model == "big")
    assert (caught.value.status, caught.value.code) == (400, "context_length_exceeded")
    assert up.calls == ["big"]


async def test_every_breaker_open_is_503_with_retry_after_and_no_attempt() -> None:
    clock = Clock()
    up = FakeClient("a", [fail(500)] * 5)
    r = router([up], [], clock, retries=4, breaker_failures=2, breaker_cooldown_seconds=30)
    with pytest.raises(UpstreamError):
        await r.complete({"model": "m"}, "r")
    calls = len(up.calls)
    with pytest.raises(UpstreamError) as caught:
        await r.complete({"model": "m"}, "r2")
    assert caught.value.status == 503
    assert int(caught.value.headers["Retry-After"]) >= 29
    assert len(up.calls) == calls
    assert not await r.ready()


# --- hedging ---------------------------------------------------------------------------------


class FakeStream:
    def __init__(self, name: str) -> None:
        self.upstream = name
        self.closed = False

    def close(self) -> None:
        self.closed = True


async def test_the_hedge_wins_when_the_first_route_has_no_token_and_the_first_is_cancelled() -> None:
    first_cancelled = asyncio.Event()
    hedged_stream: Any = FakeStream("b")

    async def route(only: Any, busy: set[tuple[str, str]]) -> Any:
        if only is None:
            busy.add(("a", "m"))
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                first_cancelled.set()
                raise
        assert not only(FakeClient("a"), "m")  # the hedge skips what the first route is trying
        return hedged_stream

    hedges: list[int] = []
    result = await hedged(route, 0, lambda: hedges.append(1))
    await asyncio.wait_for(first_cancelled.wait(), 5)
    assert result is hedged_stream
    assert hedges == [1]


async def test_when_both_routes_fail_the_first_routes_error_is_reported() -> None:
    hedge_failed = asyncio.Event()

    async def route(only: Any, busy: set[tuple[str, str]]) -> Any:
        if only is None:
            await hedge_failed.wait()
            raise fail(500)
        hedge_failed.set()
        raise timeout_failure("header_timeout")

    with pytest.raises(UpstreamError) as caught:
        await hedged(route, 0, lambda: None)
    assert caught.value.code == "upstream_failed"


async def test_no_hedge_starts_when_the_first_route_answers_in_time() -> None:
    stream: Any = FakeStream("a")

    async def route(only: Any, busy: set[tuple[str, str]]) -> Any:
        assert only is None
        return stream

    hedges: list[int] = []
    assert await hedged(route, 30, lambda: hedges.append(1)) is stream
    assert hedges == []


async def test_a_client_leaving_during_a_trial_frees_it_for_the_next_request() -> None:
    clock = Clock()
    b = breakers(clock, failures=1, cooldown=1)
    await b.failed("a")
    clock.now += 2
    trials = await b.admit("a", "m")
    assert names(trials) == ["a"]
    assert await b.admit("a", "m") is None  # the trial is taken
    await b.end_trials(trials or [])
    assert names(await b.admit("a", "m")) == ["a"]


async def test_a_429_holds_one_model_at_an_upstream_and_not_the_others() -> None:
    b = breakers(Clock())
    await b.judge("a", "big", fail(429, "5"))
    assert await b.admit("a", "big") is None
    assert await b.admit("a", "small") == []


async def test_a_request_cancelled_during_its_trial_attempt_frees_the_trial() -> None:
    clock = Clock()
    started = asyncio.Event()

    class Hanging(FakeClient):
        async def complete(self, body: dict[str, Any], request_id: str, record: Any = None) -> bytes:
            started.set()
            await asyncio.Event().wait()
            return b""

    up = Hanging("a")
    r = router([up], [], clock, breaker_failures=1, breaker_cooldown_seconds=1)
    await r.breakers.failed("a")
    clock.now += 2
    task = asyncio.create_task(r.complete({"model": "m"}, "r"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert names(await r.breakers.admit("a", "m")) == ["a"]


async def test_a_trial_that_gets_another_429_is_held_for_the_429_not_the_cooldown() -> None:
    clock = Clock()
    b = breakers(clock, failures=5, cooldown=30)
    await b.failed("a", rate_limited=True)
    clock.now += 1.6
    assert await b.acquire("a")
    await b.failed("a", rate_limited=True)
    clock.now += 1.6
    assert await b.acquire("a")


# --- every trial ends with its attempt --------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, None), (404, None), (400, "context_length_exceeded"), (400, "content_policy_violation")],
)
async def test_an_upstream_trial_ended_by_the_clients_own_error_is_freed_and_stays_half_open(
    status: int, code: str | None
) -> None:
    """Catches: `judge` leaving a trial its failure does not count against held until the lease (breaker.py)."""
    clock = Clock()
    b = breakers(clock, failures=1, cooldown=30)
    await b.failed("a")
    clock.now += 31
    trials = await b.admit("a", "m")
    assert names(trials) == ["a"]
    await b.judge("a", "m", fail(status, code=code), trials or [])
    assert await b.state("a") is BreakerState.HALF_OPEN
    assert names(await b.admit("a", "m")) == ["a"]  # the next request is the trial at once


async def test_a_hold_trial_ended_by_the_clients_own_error_is_freed() -> None:
    clock = Clock()
    b = breakers(clock)
    await b.judge("a", "m", fail(429, "1"))
    clock.now += 1.6
    trials = await b.admit("a", "m")
    assert names(trials) == ["a/m"]
    await b.judge("a", "m", fail(400), trials or [])
    assert names(await b.admit("a", "m")) == ["a/m"]


async def test_a_5xx_at_a_hold_trial_frees_the_hold_and_counts_against_the_upstream() -> None:
    clock = Clock()
    b = breakers(clock, failures=2, cooldown=30)
    await b.judge("a", "m", fail(429, "1"))
    clock.now += 1.6
    trials = await b.admit("a", "m")
    await b.judge("a", "m", fail(500), trials or [])
    assert names(await b.admit("a", "m")) == ["a/m"]  # the hold's trial is free again
    await b.failed("a")
    assert await b.state("a") is BreakerState.OPEN  # the 500 was the first of two in a row


async def test_a_429_at_an_upstream_trial_frees_the_upstream_and_holds_the_model() -> None:
    clock = Clock()
    b = breakers(clock, failures=1, cooldown=30)
    await b.failed("a")
    clock.now += 31
    trials = await b.admit("a", "big")
    assert names(trials) == ["a"]
    await b.judge("a", "big", fail(429, "5"), trials or [])
    assert await b.state("a") is BreakerState.HALF_OPEN
    assert await b.admit("a", "big") is None  # that model is held for its Retry-After
    assert names(await b.admit("a", "small")) == ["a"]  # another model may be the upstream's trial


async def test_a_failure_counted_at_an_upstream_trial_reopens_it_for_the_cooldown() -> None:
    clock = Clock()
    b = breakers(clock, failures=1, cooldown=30)
    await b.failed("a")
    clock.now += 31
    await b.judge("a", "m", fail(500), await b.admit("a", "m") or [])
    assert await b.state("a") is BreakerState.OPEN
    assert await b.reopens_in("a") == pytest.approx(30)


async def test_a_5xx_at_the_trial_after_a_503s_retry_after_reopens_for_the_cooldown() -> None:
    """Catches: a failed trial counted as one more failure only, its trial left held (breaker.py `failed`)."""
    clock = Clock()
    b = breakers(clock, failures=5, cooldown=30)
    await b.judge("a", "m", fail(503, "4"))  # one failure of five: open for its Retry-After alone
    clock.now += 4.1
    await b.judge("a", "m", fail(500), await b.admit("a", "m") or [])
    assert await b.state("a") is BreakerState.OPEN
    assert await b.reopens_in("a") == pytest.approx(30)


async def test_a_429_at_a_hold_trial_holds_the_model_again() -> None:
    clock = Clock()
    b = breakers(clock)
    await b.judge("a", "m", fail(429, "1"))
    clock.now += 1.6
    await b.judge("a", "m", fail(429, "4"), await b.admit("a", "m") or [])
    assert await b.admit("a", "m") is None
    assert await b.pair_reopens_in("a", "m") == pytest.approx(4)


async def test_a_successful_attempt_closes_both_breakers_whose_trial_it_held() -> None:
    clock = Clock()
    b = breakers(clock, failures=1, cooldown=1)
    await b.judge("a", "m", fail(429, "1"))
    await b.failed("a")
    clock.now += 2
    trials = await b.admit("a", "m")
    assert names(trials) == ["a/m", "a"]
    await b.answered("a", "m")
    assert await b.state("a") is BreakerState.CLOSED
    assert await b.admit("a", "m") == []


async def test_freeing_a_trial_whose_lease_ran_out_leaves_the_later_trial_alone() -> None:
    """Catches: `release` freeing whatever trial the breaker holds, not the one the attempt began (breaker.py)."""
    clock = Clock()
    b = breakers(clock, failures=1, cooldown=1)
    await b.failed("a")
    clock.now += 2
    late = await b.admit("a", "m")
    clock.now += TRIAL_LEASE_SECONDS + 1  # its lease ran out: another request took a new trial
    assert names(await b.admit("a", "m")) == ["a"]
    await b.judge("a", "m", fail(400), late or [])
    assert await b.admit("a", "m") is None  # the later trial still runs


class StreamingClient(FakeClient):
    """A FakeClient that streams too, from the same script."""

    async def open_stream(
        self, body: dict[str, Any], request_id: str, on_accepted: Any = None, record: Any = None
    ) -> Any:
        await self.complete(body, request_id)
        return FakeStream(self.name)


@pytest.mark.parametrize("call", ["complete", "open_stream"])
@pytest.mark.parametrize("status", [400, 500])
async def test_the_request_after_a_failed_trial_of_a_429_hold_is_served(call: str, status: int) -> None:
    """Catches: the attempt loop not handing its trials to `judge` (server/upstreams/attempts.py)."""
    clock = Clock()
    up = StreamingClient("a", [fail(429, "1"), fail(status)])
    r = router([up], [], clock, retries=0)
    send = getattr(r, call)
    with pytest.raises(UpstreamError) as caught:
        await send({"model": "m"}, "r1")
    assert caught.value.status == 429
    clock.now += 1.6  # the hold (1.5 s at least) is over: the next request is its trial
    with pytest.raises(UpstreamError) as caught:
        await send({"model": "m"}, "r2")
    assert caught.value.status == (400 if status == 400 else 502)
    assert await send({"model": "m"}, "r3")
    assert up.calls == ["m", "m", "m"]


async def test_the_request_after_a_client_error_at_an_upstream_trial_is_served() -> None:
    clock = Clock()
    up = FakeClient("a", [fail(500), fail(500), fail(400)])
    r = router([up], [], clock, retries=0, breaker_failures=2, breaker_cooldown_seconds=2)
    for rid in ("r1", "r2"):
        with pytest.raises(UpstreamError):
            await r.complete({"model": "m"}, rid)
    assert not await r.ready()
    clock.now += 2.1
    with pytest.raises(UpstreamError) as caught:
        await r.complete({"model": "m"}, "r3")
    assert caught.value.status == 400
    assert await r.ready()
    assert await r.complete({"model": "m"}, "r4") == b"ok"
    assert await r.breakers.state("a") is BreakerState.CLOSED


async def test_the_pair_a_route_waits_to_retry_stays_out_of_reach_of_a_hedge(monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches: a failed attempt's (upstream, model) freed for the hedge while its route backs off to
    retry it (server/upstreams/attempts.py, `busy`): a hedge then asked that upstream within its
    Retry-After, and past the retry count."""
    up = StreamingClient("a", [fail(500)])
    r = router([up], [], hedge_after_seconds=5)
    taken: set[tuple[str, str]] = set()

    async def first_route_only(route: Any, after: float, on_hedge: Any) -> Any:
        return await route(None, taken)  # the set the hedge would skip, read during the backoff below

    backing_off: list[set[tuple[str, str]]] = []

    async def sleep(seconds: float) -> None:
        backing_off.append(set(taken))

    monkeypatch.setattr(attempts, "hedged", first_route_only)
    monkeypatch.setattr(r, "_sleep", sleep)
    await r.open_stream({"model": "m"}, "r")
    assert backing_off == [{("a", "m")}]
    assert up.calls == ["m", "m"]


async def test_a_hedge_that_wins_frees_the_trial_the_slow_route_held() -> None:
    """Catches: an attempt cancelled by the winning hedge keeping its trial (server/upstreams/attempts.py)."""
    clock = Clock()

    class Slow(StreamingClient):
        async def open_stream(
            self, body: dict[str, Any], request_id: str, on_accepted: Any = None, record: Any = None
        ) -> Any:
            if body["model"] == "big":
                await asyncio.Event().wait()  # no first token: the hedge starts
            return await super().open_stream(body, request_id, on_accepted)

    class Watched(MemoryBreakerStore):
        """Sets `freed` when the trial of (a, big) is freed."""

        def __init__(self) -> None:
            super().__init__()
            self.freed = asyncio.Event()

        async def update(self, name: str, change: Callable[[BreakerRecord], BreakerRecord]) -> BreakerRecord:
            before = self.peek(name)
            record = await super().update(name, change)
            if name.replace("\x00", "/") == "a/big" and before.trial_since is not None and record.trial_since is None:
                self.freed.set()
            return record

    up, store = Slow("a"), Watched()
    r = router([up], [], clock, store, hedge_after_seconds=0.01, fallbacks={"big": ("small",)})
    await r.breakers.judge("a", "big", fail(429, "1"))
    clock.now += 1.6
    stream = await r.open_stream({"model": "big"}, "r")  # "big" holds the hold's trial; "small" answers
    assert stream.upstream == "a"
    assert up.calls == ["small"]
    await asyncio.wait_for(store.freed.wait(), 5)  # the cancelled route frees it on its way out
    assert names(await r.breakers.admit("a", "big")) == ["a/big"]


async def test_a_probe_cancelled_before_its_answer_frees_its_trial() -> None:
    """Catches: the probe keeping the trial of a probe that never answered (server/upstreams/probe.py)."""
    clock = Clock()
    probing = asyncio.Event()

    class Hanging(FakeClient):
        async def probe(self) -> int | None:
            probing.set()
            await asyncio.Event().wait()
            return 200

    r = router([Hanging("a")], [], clock, breaker_failures=1, breaker_cooldown_seconds=1)
    prober = Prober(r, 1, clock)
    await r.breakers.failed("a")
    clock.now += 2
    task = asyncio.create_task(prober.probe_due())
    await probing.wait()
    assert await r.breakers.admit("a", "m") is None  # the probe holds the trial
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert names(await r.breakers.admit("a", "m")) == ["a"]


async def probed_once(status: int) -> Upstream:
    """A routing whose one upstream ("a") was due a trial, after one background probe answered `status`."""

    class Answering(FakeClient):
        async def probe(self) -> int | None:
            return status

    clock = Clock()
    r = router([Answering("a")], [], clock, breaker_failures=1, breaker_cooldown_seconds=1)
    prober = Prober(r, 1, clock)
    await r.breakers.failed("a")
    clock.now += 2
    await prober.probe_due()
    return r


async def test_a_probe_answered_429_keeps_the_breaker_half_open_and_frees_its_trial() -> None:
    """An upstream limiting /models is up: no new cooldown, and the next request may be the trial.

    Catches: the probe counting a 429 against the upstream (server/upstreams/probe.py).
    """
    r = await probed_once(429)
    assert await r.breakers.state("a") is BreakerState.HALF_OPEN
    assert names(await r.breakers.admit("a", "m")) == ["a"]


async def test_a_probe_answered_401_reopens_the_breaker() -> None:
    """Catches: the probe taking a refused key for a live upstream (server/upstreams/probe.py)."""
    r = await probed_once(401)
    assert await r.breakers.state("a") is BreakerState.OPEN


# --- when the background probe goes out ----------------------------------------------------------

PROBE_INTERVAL = 5.0


class Probed(FakeClient):
    """An upstream still down: each probe answers 500 and is counted."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.probes = 0

    async def probe(self) -> int | None:
        self.probes += 1
        return 500


def probing(cooldown: float = 2) -> tuple[Upstream, Probed, Prober, Clock]:
    """One upstream ("a") whose breaker opens at its first failure, and a prober made at the clock's now."""
    clock = Clock()
    client = Probed("a")
    r = router([client], [], clock, breaker_failures=1, breaker_cooldown_seconds=cooldown)
    return r, client, Prober(r, PROBE_INTERVAL, clock), clock


async def test_with_every_breaker_closed_the_prober_looks_again_after_an_interval() -> None:
    _, _, prober, clock = probing()
    clock.now += 10  # long past the start's interval
    assert await prober.seconds_to_next() == PROBE_INTERVAL


async def test_an_open_upstream_is_probed_the_moment_its_cooldown_ends_not_at_the_next_tick() -> None:
    """Probed on a tick alone, a down upstream stayed half-open (and /readyz ready) until the tick."""
    r, client, prober, clock = probing(cooldown=2)
    clock.now += 10
    await r.breakers.failed("a")
    assert await prober.seconds_to_next() == 2
    clock.now += 2
    await prober.probe_due()
    assert client.probes == 1
    assert await r.breakers.state("a") is BreakerState.OPEN


async def test_one_upstream_is_not_probed_twice_within_the_interval() -> None:
    r, client, prober, clock = probing(cooldown=2)
    clock.now += 10
    await r.breakers.failed("a")
    clock.now += 2
    await prober.probe_due()  # answered 500: open again for the 2 s cooldown
    assert await prober.seconds_to_next() == PROBE_INTERVAL
    clock.now += 2
    await prober.probe_due()
    assert client.probes == 1


async def test_a_look_before_the_cooldown_ended_does_not_put_the_probe_off() -> None:
    r, client, prober, clock = probing(cooldown=2)
    clock.now += 10
    await r.breakers.failed("a")
    clock.now += 1  # woken early: still open
    await prober.probe_due()
    clock.now += 1
    await prober.probe_due()
    assert client.probes == 1


async def test_no_probe_goes_out_within_an_interval_of_the_start() -> None:
    r, client, prober, clock = probing(cooldown=2)
    await r.breakers.failed("a")
    clock.now += 2
    assert await prober.seconds_to_next() == PROBE_INTERVAL - 2
    await prober.probe_due()
    assert client.probes == 0


class WallClock(Clock):
    """The real wall clock, for a prober that sleeps for real."""

    def __call__(self) -> float:
        return time.time()


async def test_the_probe_loop_outlives_a_probe_that_fails_for_a_bug() -> None:
    """A loop that died of it would leave the breaker open, and the process unready, for good."""
    recovered = asyncio.Event()

    class FailingOnce(FakeClient):
        probes = 0

        async def probe(self) -> int | None:
            self.probes += 1
            if self.probes == 1:
                raise RuntimeError("a bug")
            recovered.set()  # the breaker closes before the loop sleeps again: no await in between
            return 200

    clock = WallClock()
    r = router([FailingOnce("a")], [], clock, breaker_failures=1, breaker_cooldown_seconds=0.01)
    await r.breakers.failed("a")
    with capture_logs() as logs:
        task = asyncio.create_task(Prober(r, 0.05, clock).run())
        try:
            async with asyncio.timeout(10):  # far beyond two intervals
                await recovered.wait()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert "upstream_probe_failed" in [entry["event"] for entry in logs]
    assert await r.breakers.state("a") is BreakerState.CLOSED


async def test_a_trial_a_request_holds_puts_the_next_look_an_interval_away_not_in_a_loop() -> None:
    """The breaker is past its cooldown while the request's trial runs: a prober that saw it due every
    time would wake at once, again and again."""
    r, client, prober, clock = probing(cooldown=2)
    clock.now += 10
    await r.breakers.failed("a")
    clock.now += 2
    assert await r.breakers.acquire("a") is Admission.TRIAL
    await prober.probe_due()
    assert client.probes == 0
    assert await prober.seconds_to_next() == PROBE_INTERVAL


# --- what each attempt is noted as -------------------------------------------------------------


def attempts_counted(metrics: Metrics, upstream: str, result: str) -> float | None:
    """sluice_upstream_attempts_total{upstream,result} now (None: never counted)."""
    return metrics.registry.get_sample_value("sluice_upstream_attempts_total", {"upstream": upstream, "result": result})


async def test_an_attempt_is_noted_with_the_upstreams_own_status_not_the_one_the_client_gets() -> None:
    metrics = Metrics()
    record = RequestRecord(started=0)
    with pytest.raises(UpstreamError) as caught:
        await router([FakeClient("a", [fail(401)])], [], metrics=metrics).complete({"model": "m"}, "r", record)
    assert caught.value.status == 502  # the gateway's credentials, not the client's
    assert [a["status"] for a in record.attempts] == [401]
    assert (attempts_counted(metrics, "a", "401"), attempts_counted(metrics, "a", "502")) == (1, None)


class Waiting(FakeClient):
    """Streams `small`; any other model gets no answer. `waiting` is set once `count` requests wait."""

    def __init__(self, name: str, count: int = 1) -> None:
        super().__init__(name)
        self.waiting = asyncio.Event()
        self.hung = 0
        self.count = count
        self.cancelled = asyncio.Event()

    async def hang(self) -> None:
        self.hung += 1
        if self.hung == self.count:
            self.waiting.set()
        try:
            await asyncio.Event().wait()
        finally:
            self.cancelled.set()

    async def complete(self, body: dict[str, Any], request_id: str, record: Any = None) -> bytes:
        await self.hang()
        return b""

    async def open_stream(
        self, body: dict[str, Any], request_id: str, on_accepted: Any = None, record: Any = None
    ) -> Any:
        if body["model"] != "small":
            await self.hang()
        return FakeStream(self.name)


async def test_the_attempt_a_hedge_won_over_is_noted_once_as_hedge_lost() -> None:
    metrics = Metrics()
    up, record = Waiting("a"), RequestRecord(started=0)
    r = router([up], [], metrics=metrics, hedge_after_seconds=0.01, fallbacks={"big": ("small",)})
    await r.open_stream({"model": "big"}, "r", record)
    noted = sorted((a["model"], a["status"]) for a in record.attempts)
    await asyncio.wait_for(up.cancelled.wait(), 5)  # the losing route has ended too: nothing more is noted
    assert noted == [("big", "hedge_lost"), ("small", 200)]
    assert len(record.attempts) == 2
    assert attempts_counted(metrics, "a", "hedge_lost") == 1


class FailsOnceTheHedgeStarts(FakeClient):
    """`big` fails with a 500 once the hedge's `small` started; `small` answers once that failure is judged."""

    def __init__(self, name: str, judged: asyncio.Event) -> None:
        super().__init__(name)
        self.small_started = asyncio.Event()
        self.judged = judged

    async def open_stream(
        self, body: dict[str, Any], request_id: str, on_accepted: Any = None, record: Any = None
    ) -> Any:
        if body["model"] == "big":
            await self.small_started.wait()
            raise fail(500)
        self.small_started.set()
        await self.judged.wait()
        return FakeStream(self.name)


class SlowToCount(MemoryBreakerStore):
    """A breaker store whose first write is set `judging`, then waits forever (a slow Redis)."""

    def __init__(self) -> None:
        super().__init__()
        self.judging = asyncio.Event()

    async def update(self, name: str, change: Any) -> Any:
        if not self.judging.is_set():
            self.judging.set()
            await asyncio.Event().wait()
        return await super().update(name, change)


async def test_an_attempt_that_failed_while_its_hedge_won_is_noted_once_with_its_status() -> None:
    store = SlowToCount()
    up, record = FailsOnceTheHedgeStarts("a", store.judging), RequestRecord(started=0)
    r = router([up], [], store=store, hedge_after_seconds=0.01, fallbacks={"big": ("small",)})
    await r.open_stream({"model": "big"}, "r", record)
    assert sorted((a["model"], a["status"]) for a in record.attempts) == [("big", 500), ("small", 200)]


async def test_an_attempt_in_flight_when_the_client_leaves_is_noted_as_cancelled() -> None:
    metrics = Metrics()
    up, record = Waiting("a"), RequestRecord(started=0)
    task = asyncio.create_task(router([up], [], metrics=metrics).complete({"model": "m"}, "r", record))
    await up.waiting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [a["status"] for a in record.attempts] == ["cancelled"]
    assert attempts_counted(metrics, "a", "cancelled") == 1


async def test_a_hedges_attempts_in_flight_when_the_request_ends_are_noted_before_it_returns() -> None:
    """The access line is written when the request ends (at once for a deadline's 504); the routes
    the hedge cancels run only later: their attempts must be in the record already."""
    up, record = Waiting("a", count=2), RequestRecord(started=0)
    r = router([up], [], hedge_after_seconds=0.01, fallbacks={"big": ("medium",)})
    at_the_end: list[tuple[str, object]] = []

    async def request() -> None:
        try:
            await r.open_stream({"model": "big"}, "r", record)
        finally:
            at_the_end.extend((a["model"], a["status"]) for a in record.attempts)

    task = asyncio.create_task(request())
    await up.waiting.wait()  # both routes' attempts wait for their first token
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(at_the_end) == [("big", "cancelled"), ("medium", "cancelled")]


async def test_a_losing_route_that_opens_its_stream_despite_the_cancel_has_it_closed() -> None:
    closed = asyncio.Event()

    class LoserStream(FakeStream):
        def close(self) -> None:
            super().close()
            closed.set()

    loser_stream: Any = LoserStream("a")

    async def route(only: Any, busy: set[tuple[str, str]]) -> Any:
        if only is None:
            busy.add(("a", "m"))
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                return loser_stream  # the cancel arrived as the stream opened: returned anyway
        return FakeStream("b")

    result = await hedged(route, 0, lambda: None)
    assert result is not loser_stream
    await asyncio.wait_for(closed.wait(), 5)
