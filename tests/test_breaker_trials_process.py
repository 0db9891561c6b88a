"""A half-open breaker's trial ends with its attempt, against `python run.py` and the simulator process.

The trial after a 429 hold (the model's) or after a breaker's cooldown (the upstream's) may end
with a failure that does not count against it: the client's own 4xx, a 5xx at the model's hold,
a 429 at the upstream's trial, a client that left. The request right after it is served, not
refused (503 `upstream_unavailable`, or 429 for the model's hold) until the 60 s trial lease runs
out. Each test waits out only the hold or cooldown it configured, on an observable (the trial request reaching the
simulator, /readyz), never on a guessed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.client import new_request_id, sim_wait
from tests.support.processes import Gateway, Simulator
from tests.support.resilience import ask, attempts, completed, gateway_with
from tests.support.servers import RedisServer

# Two failures open the upstream's breaker for 2 s; no retry, so each request is one attempt, and
# no probe within a test (the first comes 30 s after the start), so the next request is the trial.
BREAKER = {
    "SLUICE_ROUTING_BREAKER_FAILURES": "2",
    "SLUICE_ROUTING_BREAKER_COOLDOWN_SECONDS": "2",
    "SLUICE_ROUTING_RETRIES": "0",
    "SLUICE_UPSTREAM_PROBE_INTERVAL": "30",
}
# A 429 with Retry-After: 1 holds its model for 1.5 s (the shortest hold); then the next request is its trial.
HOLD = {"SLUICE_ROUTING_RETRIES": "0", "SLUICE_UPSTREAM_PROBE_INTERVAL": "30"}
# How long a test waits for a hold or cooldown of 2 s at most to be over: far below the 60 s lease.
WAIT_SECONDS = 15.0
# How a request is refused while the upstream's breaker is open, and while a model is held after a 429.
UNAVAILABLE = (503, "upstream_unavailable")
RATE_LIMITED = (429, "rate_limit_exceeded")
GAUGE = re.compile(r'^sluice_upstream_breaker_state\{upstream="default"\} (\S+)$', re.MULTILINE)


async def send(gateway: Gateway, route: str, directive: str, rid: str, model: str = "gpt-4o") -> tuple[int, Any]:
    """One chat steered by `directive`, on `route` ("chat": POST /chat, "stream": /v1 streaming).

    The status, and the error body (None for a success, a whole answer checked).
    """
    if route == "stream":
        status, events, error = await ask(gateway, directive, rid, model=model)
        assert status != 200 or completed(events, 2)
        return status, None if error is None else error["body"]
    body = {"message": f"hi\n#sim {directive}", "model": model}
    async with aiohttp.ClientSession() as http:
        async with http.post(gateway.url + "/chat", json=body, headers={"X-Request-ID": rid}) as response:
            answer = await response.json()
    return response.status, None if response.status == 200 else answer


async def trial(
    gateway: Gateway, simulator: Simulator, route: str, directive: str, held: tuple[int, str] = UNAVAILABLE
) -> int:
    """Send `directive` until one such request reaches the upstream (the hold or cooldown is over): its status.

    Until then each is refused at once with `held` (status, code), and the upstream sees nothing: 503
    `upstream_unavailable` for a breaker's cooldown, 429 `rate_limit_exceeded` for a model's 429 hold.
    """
    deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
    while True:
        rid = new_request_id("trial")
        status, error = await send(gateway, route, directive, rid)
        if await attempts(simulator, rid):
            return status
        assert (status, error["error"]["code"]) == held
        assert asyncio.get_running_loop().time() < deadline, "the hold never ended"
        await asyncio.sleep(0.05)


async def readiness(gateway: Gateway) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway.url + "/readyz") as response:
            return response.status, (await response.json())["status"]


async def until_ready(gateway: Gateway) -> None:
    """Wait until /readyz is 200: the breaker's cooldown is over (half-open) and no trial holds it."""
    deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
    while (await readiness(gateway))[0] != 200:
        assert asyncio.get_running_loop().time() < deadline, "the upstream never became ready"
        await asyncio.sleep(0.05)


async def gauge(gateway: Gateway) -> float:
    """The upstream's breaker gauge: 0 closed, 1 half-open, 2 open."""
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway.url + "/metrics") as response:
            found = GAUGE.search(await response.text())
    assert found is not None
    return float(found.group(1))


async def open_breaker(gateway: Gateway) -> None:
    """Two 500s in a row: the upstream's breaker opens for its 2 s cooldown."""
    for label in ("open-1", "open-2"):
        assert (await send(gateway, "chat", "fault=server_error", new_request_id(label)))[0] == 502
    assert await gauge(gateway) == 2
    assert await readiness(gateway) == (503, "upstream_down")


# --- the model's 429 hold -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "fault", "status"),
    [("chat", "bad_request", 400), ("chat", "server_error", 502), ("stream", "content_policy", 400)],
)
async def test_the_request_after_a_failed_trial_of_a_429_hold_is_served(
    simulator: Simulator, tmp_path: Path, route: str, fault: str, status: int
) -> None:
    with gateway_with(tmp_path, "hold", simulator, **HOLD) as gateway:
        held = await send(gateway, route, "fault=rate_limit retry_after=1", new_request_id("429"))
        assert held[0] == 429
        assert await trial(gateway, simulator, route, f"fault={fault}", held=RATE_LIMITED) == status
        rid = new_request_id("after-trial")
        after, error = await send(gateway, route, "tokens=2", rid)
    assert (after, error) == (200, None)
    assert len(await attempts(simulator, rid)) == 1


# --- the upstream's breaker ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "next_model"),
    [
        ("bad_request", 400, "gpt-4o"),
        ("context_length", 400, "gpt-4o"),
        # A 429 says nothing about the upstream (it holds that model): another model is served.
        ("rate_limit retry_after=1", 429, "gpt-4o-mini"),
    ],
)
async def test_a_breaker_trial_that_fails_without_counting_leaves_it_half_open_and_the_next_request_served(
    simulator: Simulator, tmp_path: Path, fault: str, status: int, next_model: str
) -> None:
    with gateway_with(tmp_path, "breaker-trial", simulator, **BREAKER) as gateway:
        await open_breaker(gateway)
        await until_ready(gateway)  # the 2 s cooldown is over: half-open, its trial not yet taken
        assert await trial(gateway, simulator, "chat", f"fault={fault}") == status
        ready_after_trial = await readiness(gateway)
        gauge_after_trial = await gauge(gateway)
        rid = new_request_id("after-breaker-trial")
        after, error = await send(gateway, "chat", "tokens=2", rid, model=next_model)
        gauge_after_success = await gauge(gateway)
    assert ready_after_trial == (200, "ready")
    assert gauge_after_trial == 1  # half-open, the trial free again
    assert (after, error) == (200, None)
    assert len(await attempts(simulator, rid)) == 1
    assert gauge_after_success == 0  # that request was the trial, and closed the breaker


async def test_a_breaker_trial_that_fails_reopens_it_and_its_gauge_says_open_again(
    simulator: Simulator, tmp_path: Path
) -> None:
    with gateway_with(tmp_path, "trial-failed", simulator, **BREAKER) as gateway:
        await open_breaker(gateway)
        await until_ready(gateway)
        assert await trial(gateway, simulator, "chat", "fault=server_error") == 502
        gauge_after_trial = await gauge(gateway)
        ready_after_trial = await readiness(gateway)
        await until_ready(gateway)  # another cooldown of 2 s
        after, error = await send(gateway, "chat", "tokens=2", new_request_id("after-reopened"))
        gauge_after_success = await gauge(gateway)
    assert gauge_after_trial == 2
    assert ready_after_trial == (503, "upstream_down")
    assert (after, error) == (200, None)
    assert gauge_after_success == 0


async def test_a_client_that_leaves_during_a_breaker_trial_frees_it_for_the_next_request(
    simulator: Simulator, tmp_path: Path
) -> None:
    with gateway_with(tmp_path, "trial-left", simulator, **BREAKER) as gateway:
        await open_breaker(gateway)
        await until_ready(gateway)
        rid = new_request_id("trial-left")
        body = {"message": "hi\n#sim fault=hang_first"}
        async with aiohttp.ClientSession() as http:
            leaving = asyncio.create_task(http.post(gateway.url + "/chat", json=body, headers={"X-Request-ID": rid}))
            await sim_wait(http, simulator.url, rid, "opened")
            while_trial_runs = await readiness(gateway)
            leaving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await leaving
        # The session is closed: so is the connection. The gateway frees the trial as it cancels the call.
        await until_ready(gateway)
        after, error = await send(gateway, "chat", "tokens=2", new_request_id("after-leaving"))
    assert while_trial_runs == (503, "upstream_down")
    assert (after, error) == (200, None)


async def test_with_redis_a_trial_one_instance_ended_with_a_client_error_leaves_the_other_serving(
    simulator: Simulator, tmp_path: Path, redis_server: RedisServer
) -> None:
    shared = {**BREAKER, "SLUICE_REDIS_URL": redis_server.url}
    with (
        gateway_with(tmp_path, "one", simulator, **shared) as one,
        gateway_with(tmp_path, "two", simulator, **shared) as two,
    ):
        await open_breaker(one)
        assert await readiness(two) == (503, "upstream_down")  # the breaker is shared
        await until_ready(two)
        assert await trial(one, simulator, "chat", "fault=bad_request") == 400
        ready_on_two = await readiness(two)
        after, error = await send(two, "chat", "tokens=2", new_request_id("after-shared-trial"))
    assert ready_on_two == (200, "ready")
    assert (after, error) == (200, None)
