"""Resilience of `python run.py` against the simulator process: what the upstream saw, what the client got.

Each test steers the simulator per request (`#sim` line) and reads the simulator's record of every
attempt of the request id (`/_sim/attempts/<id>`), with its time, to check attempt counts and gaps.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.client import new_request_id, sim_wait
from tests.support.processes import Gateway, Simulator
from tests.support.resilience import FALLBACK_CONFIG, ask, attempts, completed, gaps, gateway_with
from tests.support.sse import openai_text, read_events, tokens_text
from tests.test_operations import metric_value

ATTEMPTS = "sluice_upstream_attempts_total"


@pytest.fixture(scope="module")
def plain(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One upstream, default routing (2 retries, 10 s budget), no fallback."""
    gateway = gateway_with(tmp_path_factory.mktemp("plain"), "plain", simulator)
    yield gateway
    gateway.process.stop()


@pytest.fixture(scope="module")
def with_fallback(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One upstream and one fallback model for gpt-4o."""
    gateway = gateway_with(tmp_path_factory.mktemp("fallback"), "fallback", simulator, FALLBACK_CONFIG)
    yield gateway
    gateway.process.stop()


# --- one upstream, default settings -----------------------------------------------------------


async def test_a_500_then_a_200_is_rescued_by_one_quick_retry(plain: Gateway, simulator: Simulator) -> None:
    rid = new_request_id("500")
    status, events, _ = await ask(plain, "tokens=6 fault=server_error fail_times=1", rid)
    seen = await attempts(simulator, rid)
    assert status == 200
    assert completed(events, 6)
    assert len(seen) == 2
    assert gaps(seen)[0] < 5  # full jitter under 0.25 s; the bound only rules out a long wait


async def test_a_reset_before_headers_is_rescued(plain: Gateway, simulator: Simulator) -> None:
    rid = new_request_id("reset")
    status, events, _ = await ask(plain, "tokens=6 fault=reset fail_times=2", rid)
    assert status == 200
    assert completed(events, 6)
    assert len(await attempts(simulator, rid)) == 3


async def test_a_429_with_retry_after_is_retried_no_sooner_than_it_says(plain: Gateway, simulator: Simulator) -> None:
    rid = new_request_id("429")
    status, events, _ = await ask(plain, "tokens=6 fault=rate_limit retry_after=2 fail_times=1", rid)
    seen = await attempts(simulator, rid)
    assert status == 200
    assert completed(events, 6)
    assert len(seen) == 2
    assert gaps(seen)[0] >= 2.0


async def test_a_429_without_a_usable_retry_after_is_retried_no_sooner_than_1_5_s(
    plain: Gateway, simulator: Simulator
) -> None:
    rid = new_request_id("429-fast")
    status, events, _ = await ask(plain, "tokens=6 fault=rate_limit retry_after=0 fail_times=1", rid)
    seen = await attempts(simulator, rid)
    assert status == 200
    assert completed(events, 6)
    assert gaps(seen)[0] >= 1.5


async def test_a_retry_after_beyond_the_budget_returns_the_429_and_holds_the_next_request(
    simulator: Simulator, tmp_path: Path
) -> None:
    with gateway_with(tmp_path, "429-long", simulator) as gateway:
        rid, after = new_request_id("429-long"), new_request_id("429-after")
        status, _, error = await ask(gateway, "tokens=6 fault=rate_limit retry_after=30", rid)
        next_status, _, next_error = await ask(gateway, "tokens=6", after)
    assert status == 429
    assert error["headers"]["Retry-After"] == "30"
    assert len(await attempts(simulator, rid)) == 1
    # The upstream said not before 30 s: the next request is not sent there, and is told when to come
    # back, as rate limited (the model is held for a 429, the upstream itself is not down).
    assert next_status == 429
    assert next_error["body"]["error"]["code"] == "rate_limit_exceeded"
    assert 25 <= int(next_error["headers"]["Retry-After"]) <= 30
    assert await attempts(simulator, after) == []


async def test_an_error_event_before_the_first_token_is_retried(plain: Gateway, simulator: Simulator) -> None:
    rid = new_request_id("error-event")
    status, events, _ = await ask(plain, "tokens=6 fault=error_event fault_at=0 fail_times=1", rid)
    assert status == 200
    assert completed(events, 6)
    assert len(await attempts(simulator, rid)) == 2


@pytest.mark.parametrize("fault", ["malformed", "no_done"])
async def test_a_malformed_event_or_a_missing_done_still_completes(
    plain: Gateway, simulator: Simulator, fault: str
) -> None:
    rid = new_request_id(fault)
    status, events, _ = await ask(plain, f"tokens=6 fault={fault}", rid)
    assert status == 200
    assert completed(events, 6)
    assert len(await attempts(simulator, rid)) == 1


@pytest.mark.parametrize("fault", ["bad_request", "content_policy"])
async def test_a_client_error_is_never_retried(plain: Gateway, simulator: Simulator, fault: str) -> None:
    rid = new_request_id(fault)
    status, _, _ = await ask(plain, f"tokens=6 fault={fault}", rid)
    assert status == 400
    assert len(await attempts(simulator, rid)) == 1


async def test_an_overloaded_503_keeps_its_status_and_code(plain: Gateway, simulator: Simulator) -> None:
    rid = new_request_id("overloaded")
    # Without Retry-After: retried twice (no breaker opens for it), then returned as it came.
    status, _, error = await ask(plain, "tokens=6 fault=overloaded", rid)
    assert status == 503
    assert error["body"]["error"]["code"] == "overloaded"
    assert len(await attempts(simulator, rid)) == 3


async def test_a_cut_after_tokens_is_not_retried_and_ends_with_an_honest_error(
    plain: Gateway, simulator: Simulator
) -> None:
    rid = new_request_id("cut")
    status, events, _ = await ask(plain, "tokens=8 fault=cut fault_at=3", rid)
    assert status == 200
    assert len(openai_text(events).split()) == 3
    assert events[-1].json()["error"]["code"] == "upstream_stream_broken"
    assert len(await attempts(simulator, rid)) == 1


async def test_a_silent_upstream_is_not_retried_on_the_same_route(plain: Gateway, simulator: Simulator) -> None:
    rid = new_request_id("silent")
    status, _, error = await ask(plain, "tokens=6 fault=silent", rid)
    assert status == 504
    assert error["body"]["error"]["code"] == "header_timeout"
    assert len(await attempts(simulator, rid)) == 1


async def test_the_access_log_lists_every_attempt(plain: Gateway, simulator: Simulator) -> None:
    rid = new_request_id("log")
    await ask(plain, "tokens=2 fault=server_error fail_times=2", rid)
    line = plain.process.wait_for_event("request_finished", request_id=rid)
    assert [a["status"] for a in line["attempts"]] == [500, 500, 200]  # the upstream's, not the mapped 502
    assert {a["upstream"] for a in line["attempts"]} == {"default"}
    assert line["upstream"] == "default"


async def test_an_attempt_in_flight_when_the_client_leaves_is_in_the_access_line_as_cancelled(
    plain: Gateway, simulator: Simulator
) -> None:
    rid = new_request_id("left")
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi\n#sim fault=hang_first"}], "stream": True}
    async with aiohttp.ClientSession() as http:
        before = metric_value(await (await http.get(plain.url + "/metrics")).text(), ATTEMPTS, result="cancelled")
        # Whether the response has started or not by then, the client leaves.
        request = asyncio.create_task(
            http.post(plain.url + "/v1/chat/completions", json=body, headers={"X-Request-ID": rid})
        )
        await sim_wait(http, simulator.url, rid, "opened")
        request.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            (await request).close()
        await sim_wait(http, simulator.url, rid, "closed")  # the gateway saw the client leave
        line = plain.process.wait_for_event("request_finished", request_id=rid)
        after = metric_value(await (await http.get(plain.url + "/metrics")).text(), ATTEMPTS, result="cancelled")
    assert line["outcome"] == "client_disconnected"
    assert [(a["upstream"], a["status"]) for a in line["attempts"]] == [("default", "cancelled")]
    assert after == before + 1


# --- one upstream and a fallback model --------------------------------------------------------


async def test_an_exhausted_model_falls_back_and_the_chunks_name_the_model_that_answered(
    with_fallback: Gateway, simulator: Simulator
) -> None:
    rid = new_request_id("fallback")
    status, events, _ = await ask(with_fallback, "tokens=6 fault=server_error fault_model=gpt-4o", rid)
    seen = await attempts(simulator, rid)
    assert status == 200
    assert completed(events, 6)
    assert [a["model"] for a in seen] == ["gpt-4o"] * 3 + ["gpt-4o-mini"]
    assert events[0].json()["model"] == "gpt-4o-mini"
    async with aiohttp.ClientSession() as http:
        async with http.get(with_fallback.url + "/metrics") as response:
            metrics = await response.text()
    assert 'sluice_fallbacks_total{reason="exhausted"}' in metrics
    assert 'sluice_upstream_retries_total{reason="500"}' in metrics
    assert 'sluice_upstream_attempts_total{result="500",upstream="default"}' in metrics


async def test_a_native_stream_that_fell_back_names_the_model_that_answered_in_done(
    with_fallback: Gateway, simulator: Simulator
) -> None:
    rid = new_request_id("native-fallback")
    body = {"message": "hi\n#sim tokens=4 fault=server_error fault_model=gpt-4o", "model": "gpt-4o"}
    async with aiohttp.ClientSession() as http:
        async with http.post(with_fallback.url + "/chat/stream", json=body, headers={"X-Request-ID": rid}) as r:
            events = await read_events(r)
    done = events[-1]
    assert done.event == "done"
    assert (done.json()["model"], done.json()["upstream"]) == ("gpt-4o-mini", "default")
    assert len(tokens_text(events).split()) == 4


async def test_a_silent_upstream_falls_back_at_once(with_fallback: Gateway, simulator: Simulator) -> None:
    rid = new_request_id("silent-fallback")
    status, events, _ = await ask(with_fallback, "tokens=6 fault=silent fault_model=gpt-4o", rid)
    assert status == 200
    assert completed(events, 6)
    assert [a["model"] for a in await attempts(simulator, rid)] == ["gpt-4o", "gpt-4o-mini"]


async def test_context_length_exceeded_takes_the_context_window_fallback(
    with_fallback: Gateway, simulator: Simulator
) -> None:
    rid = new_request_id("context")
    status, events, _ = await ask(with_fallback, "tokens=6 fault=context_length fault_model=gpt-4o", rid)
    assert status == 200
    assert completed(events, 6)
    assert [a["model"] for a in await attempts(simulator, rid)] == ["gpt-4o", "gpt-4.1"]


async def test_a_content_policy_refusal_never_falls_back(with_fallback: Gateway, simulator: Simulator) -> None:
    rid = new_request_id("policy")
    status, _, error = await ask(with_fallback, "tokens=6 fault=content_policy", rid)
    assert status == 400
    assert error["body"]["error"]["code"] == "content_policy_violation"
    assert len(await attempts(simulator, rid)) == 1


async def test_a_429_beyond_the_budget_falls_back_without_waiting(with_fallback: Gateway, simulator: Simulator) -> None:
    rid = new_request_id("429-fallback")
    status, events, _ = await ask(with_fallback, "tokens=6 fault=rate_limit retry_after=30 fault_model=gpt-4o", rid)
    seen = await attempts(simulator, rid)
    assert status == 200
    assert completed(events, 6)
    assert [a["model"] for a in seen] == ["gpt-4o", "gpt-4o-mini"]
    assert gaps(seen)[0] < 5


def test_importing_the_gateway_does_not_import_the_openai_sdk() -> None:
    import subprocess
    import sys

    code = (
        "import sys, server.app; print(sorted({m.split('.')[0] for m in sys.modules} & {'openai', 'httpx', 'httpx2'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
