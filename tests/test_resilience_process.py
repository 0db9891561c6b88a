"""Resilience of `python run.py` against the simulator process: what the upstream saw, what the client got.

Each test steers the simulator per request (`#sim` line) and reads the simulator's record of every
attempt of the request id (`/_sim/attempts/<id>`), with its time, to check attempt counts and gaps.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.client import new_request_id
from tests.support.processes import Gateway, Simulator, start_gateway
from tests.support.sse import Event, carries_token, openai_text, read_events, tokens_text

BASE_CONFIG = """
[logging]
format = "json"
[upstream]
connect_timeout = 2.0
header_timeout = 2.0
first_token_timeout = 5.0
idle_timeout = 5.0
total_timeout = 60.0
"""
FALLBACK_CONFIG = """
[routing]
fallbacks = { "gpt-4o" = ["gpt-4o-mini"] }
context_window_fallbacks = { "gpt-4o" = ["gpt-4.1"] }
"""


def gateway_with(tmp: Path, name: str, simulator: Simulator, extra: str = "", **env: str) -> Gateway:
    """A gateway on the default routing settings, plus `extra` TOML and `env`."""
    path = tmp / f"{name}.toml"
    path.write_text(BASE_CONFIG + extra)
    return start_gateway(upstream=simulator, config=str(path), env=env)


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


async def ask(gateway: Gateway, directive: str, rid: str, *, model: str = "gpt-4o") -> tuple[int, list[Event], Any]:
    """Stream a /v1 chat with a `#sim` directive; the status, the events (or the error body)."""
    body = {"model": model, "messages": [{"role": "user", "content": f"hi\n#sim {directive}"}], "stream": True}
    async with aiohttp.ClientSession() as http:
        async with http.post(gateway.url + "/v1/chat/completions", json=body, headers={"X-Request-ID": rid}) as r:
            if r.status != 200:
                return r.status, [], {"body": await r.json(), "headers": dict(r.headers)}
            return r.status, await read_events(r), None


async def attempts(simulator: Simulator, rid: str) -> list[dict[str, Any]]:
    """Every attempt of `rid` the simulator saw, oldest first."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{simulator.url}/_sim/attempts/{rid}") as response:
            found: list[dict[str, Any]] = (await response.json())["attempts"]
            return found


def gaps(seen: list[dict[str, Any]]) -> list[float]:
    """Seconds between one attempt's end and the next one's start."""
    return [b["opened_at"] - a["closed_at"] for a, b in itertools.pairwise(seen)]


def completed(events: list[Event], tokens: int) -> bool:
    """A whole OpenAI-dialect stream: `tokens` words, no error event, then [DONE]."""
    return (
        events[-1].data == "[DONE]"
        and not any('"error"' in e.data for e in events)
        and len(openai_text(events).split()) == tokens
    )


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
    gateway = gateway_with(tmp_path, "429-long", simulator)
    try:
        rid, after = new_request_id("429-long"), new_request_id("429-after")
        status, _, error = await ask(gateway, "tokens=6 fault=rate_limit retry_after=30", rid)
        next_status, _, next_error = await ask(gateway, "tokens=6", after)
    finally:
        gateway.process.stop()
    assert status == 429
    assert error["headers"]["Retry-After"] == "30"
    assert len(await attempts(simulator, rid)) == 1
    # The upstream said not before 30 s: the next request is not sent there, and is told when to come back.
    assert next_status == 503
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
    assert [a["status"] for a in line["attempts"]] == [502, 502, 200]
    assert {a["upstream"] for a in line["attempts"]} == {"default"}
    assert line["upstream"] == "default"


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
    assert 'sluice_upstream_attempts_total{result="502",upstream="default"}' in metrics


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


# --- waiting: heartbeats, breakers, readiness ---------------------------------------------------


async def test_heartbeats_keep_the_client_alive_while_a_retry_waits(simulator: Simulator, tmp_path: Path) -> None:
    gateway = gateway_with(tmp_path, "heartbeat", simulator, "[stream]\nheartbeat_interval = 0.3\n")
    try:
        rid = new_request_id("heartbeat")
        status, events, _ = await ask(gateway, "tokens=6 fault=rate_limit retry_after=2 fail_times=1", rid)
    finally:
        gateway.process.stop()
    first_data = next(i for i, e in enumerate(events) if e.comment is None)
    assert status == 200
    assert first_data >= 2  # heartbeat comments came before any data, while the retry waited
    assert all(e.comment == "keep-alive" for e in events[:first_data])
    assert completed(events, 6)


async def test_a_slow_first_token_is_waited_for_with_heartbeats_and_not_retried(
    simulator: Simulator, tmp_path: Path
) -> None:
    gateway = gateway_with(tmp_path, "slow", simulator, "[stream]\nheartbeat_interval = 0.2\n")
    try:
        rid = new_request_id("slow-first-token")
        status, events, _ = await ask(gateway, "tokens=4 ttft_ms=1500", rid)
    finally:
        gateway.process.stop()
    assert status == 200
    assert completed(events, 4)
    assert any(e.comment == "keep-alive" for e in events)
    assert len(await attempts(simulator, rid)) == 1


async def test_native_stream_waiting_on_a_retry_still_gets_its_tokens(simulator: Simulator, tmp_path: Path) -> None:
    gateway = gateway_with(tmp_path, "native", simulator, "[stream]\nheartbeat_interval = 0.3\n")
    try:
        rid = new_request_id("native-heartbeat")
        body = {"message": "hi\n#sim tokens=5 fault=rate_limit retry_after=1 fail_times=1"}
        async with aiohttp.ClientSession() as http:
            async with http.post(gateway.url + "/chat/stream", json=body, headers={"X-Request-ID": rid}) as r:
                events = await read_events(r)
    finally:
        gateway.process.stop()
    assert any(e.comment == "keep-alive" for e in events)
    assert len(tokens_text(events).split()) == 5
    assert events[-1].event == "done"


async def test_open_breakers_answer_503_at_once_and_readiness_recovers_by_probe(
    simulator: Simulator, tmp_path: Path
) -> None:
    routing = "[routing]\nretries = 1\nbreaker_failures = 2\nbreaker_cooldown_seconds = 1\n"
    gateway = gateway_with(tmp_path, "breaker", simulator, routing, SLUICE_UPSTREAM_PROBE_INTERVAL="0.2")
    try:
        first = new_request_id("breaker-1")
        assert (await ask(gateway, "fault=server_error", first))[0] == 502
        second = new_request_id("breaker-2")
        status, _, error = await ask(gateway, "fault=server_error", second)
        async with aiohttp.ClientSession() as http:
            async with http.get(gateway.url + "/readyz") as response:
                ready_while_open = response.status
            async with http.get(gateway.url + "/metrics") as response:
                metrics = await response.text()
            gateway.process.wait_for_event("upstream_recovered", upstream="default")
            async with http.get(gateway.url + "/readyz") as response:
                ready_after_probe = response.status
    finally:
        gateway.process.stop()
    assert len(await attempts(simulator, first)) == 2
    assert status == 503
    assert int(error["headers"]["Retry-After"]) >= 1
    assert await attempts(simulator, second) == []
    assert ready_while_open == 503
    assert 'sluice_upstream_breaker_state{upstream="default"} 2.0' in metrics
    assert ready_after_probe == 200


async def test_a_pool_routes_around_an_unreachable_upstream(simulator: Simulator, tmp_path: Path) -> None:
    from tests.support.processes import free_port

    pool = f"""
[[upstreams]]
name = "down"
base_url = "http://127.0.0.1:{free_port()}/v1"
[[upstreams]]
name = "up"
base_url = "{simulator.base_url}"
"""
    gateway = gateway_with(tmp_path, "pool", simulator, pool)
    try:
        lines = []
        for _ in range(4):
            rid = new_request_id("pool")
            status, events, _ = await ask(gateway, "tokens=3", rid)
            assert status == 200
            assert completed(events, 3)
            lines.append(gateway.process.wait_for_event("request_finished", request_id=rid))
    finally:
        gateway.process.stop()
    assert all(line["upstream"] == "up" for line in lines)
    assert any(a["upstream"] == "down" for line in lines for a in line["attempts"])


def test_importing_the_gateway_does_not_import_the_openai_sdk() -> None:
    import subprocess
    import sys

    code = (
        "import sys, server.app; print(sorted({m.split('.')[0] for m in sys.modules} & {'openai', 'httpx', 'httpx2'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- continuation after a cut -------------------------------------------------------------------


@pytest.fixture(scope="module")
def continuing(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One upstream that declares assistant-prefill continuation."""
    upstream = f"""
[[upstreams]]
name = "sim"
base_url = "{simulator.base_url}"
continuation = "assistant-prefill"
continuation_body = {{ continue_final_message = true }}
"""
    path = tmp_path_factory.mktemp("continue")
    gateway = gateway_with(path, "continue", simulator, upstream, SLUICE_UPSTREAM_IDLE_TIMEOUT="1")
    yield gateway
    gateway.process.stop()


async def test_a_cut_stream_is_continued_by_prefill_without_duplicate_or_gap(
    continuing: Gateway, simulator: Simulator
) -> None:
    rid = new_request_id("continue")
    status, events, _ = await ask(continuing, "tokens=8 fault=cut fault_at=3 fail_times=1", rid)
    seen = await attempts(simulator, rid)
    assert status == 200
    # The simulator's continuation starts without a space: count content chunks, not words.
    assert sum(1 for e in events if carries_token(e)) == 3 + 8
    assert events[-1].data == "[DONE]"
    assert not any('"error"' in e.data for e in events)
    assert sum(1 for e in events if '"finish_reason":"stop"' in e.data) == 1
    assert sum(1 for e in events if '"role":"assistant"' in e.data) == 1
    assert [a["last_role"] for a in seen] == ["user", "assistant"]
    line = continuing.process.wait_for_event("request_finished", request_id=rid)
    assert line["continuation"] == "continued"


async def test_a_stalled_stream_is_continued_after_the_idle_timeout(continuing: Gateway, simulator: Simulator) -> None:
    rid = new_request_id("continue-stall")
    status, events, _ = await ask(continuing, "tokens=8 fault=hang_mid fault_at=3 fail_times=1", rid)
    seen = await attempts(simulator, rid)
    assert status == 200
    assert sum(1 for e in events if carries_token(e)) == 3 + 8
    assert events[-1].data == "[DONE]"
    assert [a["last_role"] for a in seen] == ["user", "assistant"]
    assert seen[0]["outcome"] == "client_aborted"  # the stalled request was closed


async def test_a_continued_stream_reports_the_usage_of_both_parts(continuing: Gateway, simulator: Simulator) -> None:
    rid = new_request_id("continue-usage")
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "hi\n#sim tokens=8 fault=cut fault_at=3 fail_times=1"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(continuing.url + "/v1/chat/completions", json=body, headers={"X-Request-ID": rid}) as r:
            events = await read_events(r)
    usage = next(e.json()["usage"] for e in events if e.comment is None and '"usage":{' in e.data)
    assert usage["completion_tokens"] == 3 + 8
    assert usage["sluice_continued"] is True


async def test_a_refused_continuation_ends_with_the_error_of_the_original_cut(
    continuing: Gateway, simulator: Simulator
) -> None:
    rid = new_request_id("continue-refused")
    status, events, _ = await ask(continuing, "tokens=8 fault=cut fault_at=3 fail_times=1 reject_prefill", rid)
    seen = await attempts(simulator, rid)
    assert status == 200
    assert len(openai_text(events).split()) == 3
    error = events[-1].json()["error"]
    assert error["code"] == "upstream_stream_broken"
    assert "prefill" not in error["message"]
    assert [a["last_role"] for a in seen] == ["user", "assistant"]


# --- hedging ------------------------------------------------------------------------------------


async def test_a_hedge_starts_the_fallback_when_no_first_token_comes_and_closes_the_slow_one(
    simulator: Simulator, tmp_path: Path
) -> None:
    # first_token_timeout is far away (30 s): only the hedge can make the fallback answer early.
    extra = FALLBACK_CONFIG.replace("[routing]", "[routing]\nhedge_after_seconds = 0.5")
    gateway = gateway_with(tmp_path, "hedge", simulator, extra, SLUICE_UPSTREAM_FIRST_TOKEN_TIMEOUT="30")
    try:
        rid = new_request_id("hedge")
        status, events, _ = await ask(gateway, "tokens=6 fault=hang_first fault_model=gpt-4o", rid)
        seen = await attempts(simulator, rid)
        async with aiohttp.ClientSession() as http:
            async with http.get(gateway.url + "/metrics") as response:
                metrics = await response.text()
    finally:
        gateway.process.stop()
    assert status == 200
    assert completed(events, 6)
    assert [a["model"] for a in seen] == ["gpt-4o", "gpt-4o-mini"]
    # Not at once (the first attempt reached the simulator a little after the gateway started it).
    assert 0.3 <= seen[1]["opened_at"] - seen[0]["opened_at"] < 15
    assert seen[0]["outcome"] == "client_aborted"  # the slow attempt was closed, not left hanging
    assert "sluice_hedges_total 1.0" in metrics


async def test_a_stall_whose_continuation_is_refused_ends_with_the_idle_timeout(
    continuing: Gateway, simulator: Simulator
) -> None:
    rid = new_request_id("stall-refused")
    status, events, _ = await ask(continuing, "tokens=8 fault=hang_mid fault_at=3 fail_times=1 reject_prefill", rid)
    assert status == 200
    assert sum(1 for e in events if carries_token(e)) == 3
    assert events[-1].json()["error"]["code"] == "idle_timeout"
    line = continuing.process.wait_for_event("request_finished", request_id=rid)
    assert (line["outcome"], line["continuation"]) == ("timeout", "refused")
