"""Recovery of `python run.py` against the simulator process: breakers, readiness, pools, heartbeats,
continuation after a cut (and where it stops: several choices, the client's token limit), hedging,
and the drain's answer to requests still in flight. What the upstream saw and what the client got,
as in test_resilience_process.py.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.client import new_request_id, sim_wait
from tests.support.processes import Gateway, Simulator
from tests.support.resilience import FALLBACK_CONFIG, ask, attempts, completed, gateway_with, prefill_upstream
from tests.support.sse import Event, carries_token, openai_text, read_events, tokens_text
from tests.test_operations import metric_value

# --- waiting: heartbeats, breakers, readiness ---------------------------------------------------


async def test_heartbeats_keep_the_client_alive_while_a_retry_waits(simulator: Simulator, tmp_path: Path) -> None:
    with gateway_with(tmp_path, "heartbeat", simulator, "[stream]\nheartbeat_interval = 0.3\n") as gateway:
        rid = new_request_id("heartbeat")
        status, events, _ = await ask(gateway, "tokens=6 fault=rate_limit retry_after=2 fail_times=1", rid)
    first_data = next(i for i, e in enumerate(events) if e.comment is None)
    assert status == 200
    assert first_data >= 2  # heartbeat comments came before any data, while the retry waited
    assert all(e.comment == "keep-alive" for e in events[:first_data])
    assert completed(events, 6)


async def test_retries_that_fail_after_the_heartbeats_began_end_with_the_last_upstream_error_event(
    simulator: Simulator, tmp_path: Path
) -> None:
    with gateway_with(tmp_path, "late-failure", simulator, "[stream]\nheartbeat_interval = 0.2\n") as gateway:
        rid = new_request_id("late-failure")
        status, events, _ = await ask(gateway, "tokens=4 fault=rate_limit retry_after=0", rid)
    assert status == 200  # the response had started: the failure is the stream's final event
    assert any(e.comment == "keep-alive" for e in events)
    assert events[-1].json()["error"]["code"] == "rate_limit_exceeded"
    assert len(await attempts(simulator, rid)) == 3


async def test_a_slow_first_token_is_waited_for_with_heartbeats_and_not_retried(
    simulator: Simulator, tmp_path: Path
) -> None:
    with gateway_with(tmp_path, "slow", simulator, "[stream]\nheartbeat_interval = 0.2\n") as gateway:
        rid = new_request_id("slow-first-token")
        status, events, _ = await ask(gateway, "tokens=4 ttft_ms=1500", rid)
    assert status == 200
    assert completed(events, 4)
    assert any(e.comment == "keep-alive" for e in events)
    assert len(await attempts(simulator, rid)) == 1


async def test_native_stream_waiting_on_a_retry_still_gets_its_tokens(simulator: Simulator, tmp_path: Path) -> None:
    with gateway_with(tmp_path, "native", simulator, "[stream]\nheartbeat_interval = 0.3\n") as gateway:
        rid = new_request_id("native-heartbeat")
        body = {"message": "hi\n#sim tokens=5 fault=rate_limit retry_after=1 fail_times=1"}
        async with aiohttp.ClientSession() as http:
            async with http.post(gateway.url + "/chat/stream", json=body, headers={"X-Request-ID": rid}) as r:
                events = await read_events(r)
    assert any(e.comment == "keep-alive" for e in events)
    assert len(tokens_text(events).split()) == 5
    assert events[-1].event == "done"


async def test_open_breakers_answer_503_at_once_and_readiness_recovers_by_probe(
    simulator: Simulator, tmp_path: Path
) -> None:
    routing = "[routing]\nretries = 1\nbreaker_failures = 2\nbreaker_cooldown_seconds = 1\n"
    with gateway_with(tmp_path, "breaker", simulator, routing, SLUICE_UPSTREAM_PROBE_INTERVAL="0.2") as gateway:
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
    with gateway_with(tmp_path, "pool", simulator, pool) as gateway:
        lines: list[dict[str, Any]] = []
        # Each pick is a coin toss between the two: ask until one request has met "down" first
        # (40 tosses all landing on "up" is a 1 in 10^12 chance), and every request must succeed.
        while len(lines) < 40 and not any(a["upstream"] == "down" for line in lines for a in line["attempts"]):
            rid = new_request_id("pool")
            status, events, _ = await ask(gateway, "tokens=3", rid)
            assert status == 200
            assert completed(events, 3)
            lines.append(gateway.process.wait_for_event("request_finished", request_id=rid))
    assert all(line["upstream"] == "up" for line in lines)
    assert any(a["upstream"] == "down" for line in lines for a in line["attempts"])


# --- continuation after a cut -------------------------------------------------------------------


@pytest.fixture(scope="module")
def continuing(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One upstream that declares assistant-prefill continuation."""
    upstream = prefill_upstream("sim", simulator.base_url, "continuation_body = { continue_final_message = true }\n")
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


async def test_a_stalled_upstream_request_is_closed_when_the_stall_is_found_not_when_the_stream_ends(
    continuing: Gateway, simulator: Simulator
) -> None:
    """The stalled request is closed as its continuation opens, not held (generating, and holding a
    connection and a concurrency slot) until the continuation ends, 8 tokens 0.4 s apart later."""
    rid = new_request_id("continue-stall-closed")
    status, events, _ = await ask(continuing, "tokens=8 gap_ms=400 fault=hang_mid fault_at=3 fail_times=1", rid)
    stalled, continuation = await attempts(simulator, rid)
    assert status == 200
    assert events[-1].data == "[DONE]"
    assert continuation["closed_at"] - continuation["opened_at"] > 2.5  # the bound below is far from it
    assert stalled["closed_at"] - continuation["opened_at"] < 1.0


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


async def test_a_cut_browser_stream_is_continued_by_prefill_without_duplicate_or_gap(
    continuing: Gateway, simulator: Simulator
) -> None:
    rid = new_request_id("continue-browser")
    message = "hi\n#sim tokens=8 fault=cut fault_at=3 fail_times=1"
    async with aiohttp.ClientSession() as http:
        async with http.post(
            continuing.url + "/chat/streams", json={"message": message}, headers={"X-Request-ID": rid}
        ) as response:
            stream_id = (await response.json())["id"]
        async with http.get(f"{continuing.url}/chat/streams/{stream_id}") as response:
            events = await read_events(response)
    seen = await attempts(simulator, rid)
    assert sum(1 for e in events if carries_token(e)) == 3 + 8
    assert [e.event for e in events if e.event in ("done", "failed")] == ["done"]
    assert [a["last_role"] for a in seen] == ["user", "assistant"]
    line = continuing.process.wait_for_event("browser_stream_finished", stream_id=stream_id)
    assert (line["outcome"], line["continuation"]) == ("completed", "continued")


async def test_a_continued_browser_stream_stops_at_the_clients_max_tokens(
    continuing: Gateway, simulator: Simulator
) -> None:
    rid = new_request_id("continue-browser-limit")
    body = {"message": "hi\n#sim tokens=10 fault=cut fault_at=4 fail_times=1", "max_tokens": 6}
    async with aiohttp.ClientSession() as http:
        async with http.post(continuing.url + "/chat/streams", json=body, headers={"X-Request-ID": rid}) as response:
            stream_id = (await response.json())["id"]
        async with http.get(f"{continuing.url}/chat/streams/{stream_id}") as response:
            events = await read_events(response)
    seen = await attempts(simulator, rid)
    assert sum(1 for e in events if carries_token(e)) == 6
    (done,) = [e for e in events if e.event == "done"]
    assert done.json()["finish_reason"] == "length"
    assert json.loads(seen[1]["body"])["max_completion_tokens"] == 6 - 4  # what was left


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


async def stream_v1(gateway: Gateway, directive: str, rid: str, **fields: Any) -> list[Event]:
    """Stream a /v1 chat with a `#sim` directive and more body `fields`; its events (status 200)."""
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": f"hi\n#sim {directive}"}],
        "stream": True,
        **fields,
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(gateway.url + "/v1/chat/completions", json=body, headers={"X-Request-ID": rid}) as r:
            assert r.status == 200
            return await read_events(r)


def chunks_of(events: list[Event]) -> list[dict[str, Any]]:
    """The chat.completion.chunk objects the client got (not an error, not `[DONE]`)."""
    bodies = [e.json() for e in events if e.comment is None and e.data != "[DONE]"]
    return [body for body in bodies if "choices" in body]


def finish_reasons(events: list[Event]) -> list[str]:
    """Every finish reason the client got, in order."""
    return [c["finish_reason"] for chunk in chunks_of(events) for c in chunk["choices"] if c.get("finish_reason")]


def usage_of(events: list[Event]) -> dict[str, Any]:
    """The usage chunk's counts."""
    found: dict[str, Any] = next(e.json()["usage"] for e in events if e.comment is None and '"usage":{' in e.data)
    return found


async def continuations(gateway: Gateway, result: str) -> float:
    """sluice_continuations_total{result} now."""
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway.url + "/metrics") as response:
            return metric_value(await response.text(), "sluice_continuations_total", result=result)


async def test_a_cut_stream_with_several_choices_ends_with_the_cuts_error_and_is_not_continued(
    continuing: Gateway, simulator: Simulator
) -> None:
    rid = new_request_id("continue-n2")
    events = await stream_v1(continuing, "tokens=8 fault=cut fault_at=3 fail_times=1", rid, n=2)
    seen = await attempts(simulator, rid)
    assert finish_reasons(events) == []
    assert events[-1].json()["error"]["code"] == "upstream_stream_broken"
    assert [a["last_role"] for a in seen] == ["user"]  # no prefill was asked for


async def test_a_cut_stream_with_several_choices_counts_as_a_refused_continuation(
    continuing: Gateway, simulator: Simulator
) -> None:
    rid = new_request_id("continue-n2-count")
    before = await continuations(continuing, "refused")
    await stream_v1(continuing, "tokens=8 fault=cut fault_at=3 fail_times=1", rid, n=2)
    line = continuing.process.wait_for_event("request_finished", request_id=rid)
    assert line["continuation"] == "refused"
    assert await continuations(continuing, "refused") == before + 1


@pytest.mark.parametrize("limit", ["max_tokens", "max_completion_tokens"])
async def test_a_continued_stream_stops_at_the_clients_token_limit(
    continuing: Gateway, simulator: Simulator, limit: str
) -> None:
    rid = new_request_id(f"continue-{limit}")
    fields: dict[str, Any] = {limit: 6, "stream_options": {"include_usage": True}}
    events = await stream_v1(continuing, "tokens=10 fault=cut fault_at=4 fail_times=1", rid, **fields)
    seen = await attempts(simulator, rid)
    assert sum(1 for e in events if carries_token(e)) == 6
    assert finish_reasons(events) == ["length"]
    assert usage_of(events)["completion_tokens"] == 6
    assert events[-1].data == "[DONE]"
    assert [a["last_role"] for a in seen] == ["user", "assistant"]
    assert json.loads(seen[1]["body"])[limit] == 6 - 4  # the continuation asked for what was left


async def test_a_stream_cut_after_its_token_limit_ends_with_length_without_asking_again(
    continuing: Gateway, simulator: Simulator
) -> None:
    rid = new_request_id("continue-at-limit")
    # The simulator sends the 4 tokens max_tokens allows, then cuts before its finish chunk.
    events = await stream_v1(continuing, "tokens=10 fault=cut fault_at=4 fail_times=1", rid, max_tokens=4)
    seen = await attempts(simulator, rid)
    assert sum(1 for e in events if carries_token(e)) == 4
    assert finish_reasons(events) == ["length"]
    assert events[-1].data == "[DONE]"
    assert len({chunk["id"] for chunk in chunks_of(events)}) == 1  # the finish chunk is the cut completion's
    assert [a["last_role"] for a in seen] == ["user"]
    line = continuing.process.wait_for_event("request_finished", request_id=rid)
    assert (line["outcome"], line["finish_reason"]) == ("completed", "length")


async def test_a_continued_stream_reports_the_prompt_tokens_of_the_original_request(
    continuing: Gateway, simulator: Simulator
) -> None:
    # Steered by the body's `sim` field, so both prompts are the same words.
    whole = await stream_v1(
        continuing, "", new_request_id("whole"), sim={"tokens": 8}, stream_options={"include_usage": True}
    )
    cut = {"tokens": 8, "fault": "cut", "fault_at": 3, "fail_times": 1}
    continued = await stream_v1(
        continuing, "", new_request_id("prompt-usage"), sim=cut, stream_options={"include_usage": True}
    )
    assert usage_of(continued)["prompt_tokens"] == usage_of(whole)["prompt_tokens"]


# --- hedging ------------------------------------------------------------------------------------


async def test_a_hedge_starts_the_fallback_when_no_first_token_comes_and_closes_the_slow_one(
    simulator: Simulator, tmp_path: Path
) -> None:
    # first_token_timeout is far away (30 s): only the hedge can make the fallback answer early.
    extra = FALLBACK_CONFIG.replace("[routing]", "[routing]\nhedge_after_seconds = 0.5")
    with gateway_with(tmp_path, "hedge", simulator, extra, SLUICE_UPSTREAM_FIRST_TOKEN_TIMEOUT="30") as gateway:
        rid = new_request_id("hedge")
        status, events, _ = await ask(gateway, "tokens=6 fault=hang_first fault_model=gpt-4o", rid)
        seen = await attempts(simulator, rid)
        async with aiohttp.ClientSession() as http:
            async with http.get(gateway.url + "/metrics") as response:
                metrics = await response.text()
    assert status == 200
    assert completed(events, 6)
    assert [a["model"] for a in seen] == ["gpt-4o", "gpt-4o-mini"]
    # Not at once (the first attempt reached the simulator a little after the gateway started it).
    assert 0.3 <= seen[1]["opened_at"] - seen[0]["opened_at"] < 15
    assert seen[0]["outcome"] == "client_aborted"  # the slow attempt was closed, not left hanging
    assert "sluice_hedges_total 1.0" in metrics


async def test_the_attempt_a_hedge_won_over_is_in_the_access_line_and_counted_as_hedge_lost(
    simulator: Simulator, tmp_path: Path
) -> None:
    extra = FALLBACK_CONFIG.replace("[routing]", "[routing]\nhedge_after_seconds = 0.5")
    with gateway_with(tmp_path, "hedge-lost", simulator, extra, SLUICE_UPSTREAM_FIRST_TOKEN_TIMEOUT="30") as gateway:
        rid = new_request_id("hedge-lost")
        _, events, _ = await ask(gateway, "tokens=3 fault=hang_first fault_model=gpt-4o", rid)
        line = gateway.process.wait_for_event("request_finished", request_id=rid)
        async with aiohttp.ClientSession() as http:
            async with http.get(gateway.url + "/metrics") as response:
                metrics = await response.text()
    assert completed(events, 3)
    assert sorted((a["model"], a["status"]) for a in line["attempts"]) == [
        ("gpt-4o", "hedge_lost"),
        ("gpt-4o-mini", 200),
    ]
    assert metric_value(metrics, "sluice_upstream_attempts_total", upstream="default", result="hedge_lost") == 1


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


# --- draining -----------------------------------------------------------------------------------

DRAINING = "[server]\ndrain_timeout = 1.0\nretry_after = 7\n[stream]\nheartbeat_interval = 60.0\n"


async def drained(gateway: Gateway, simulator: Simulator, body: dict[str, Any], rid: str) -> aiohttp.ClientResponse:
    """Send `body`, SIGTERM the gateway once the simulator holds it, and return the gateway's answer (read)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        request = asyncio.create_task(
            http.post(gateway.url + "/v1/chat/completions", json=body, headers={"X-Request-ID": rid})
        )
        await sim_wait(http, simulator.url, rid, "opened")
        gateway.process.signal(signal.SIGTERM)
        response = await request
        await response.read()
        return response


async def test_a_non_streaming_call_the_drain_ends_gets_503_with_retry_after(
    simulator: Simulator, tmp_path: Path
) -> None:
    rid = new_request_id("drain-call")
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi\n#sim fault=hang_first"}]}
    with gateway_with(tmp_path, "drain-call", simulator, DRAINING) as gateway:
        response = await drained(gateway, simulator, body, rid)
    assert response.status == 503
    assert (await response.json())["error"]["code"] == "server_shutting_down"
    assert response.headers.get("Retry-After") == "7"


async def test_a_stream_still_routing_when_the_drain_ends_gets_503_with_retry_after(
    simulator: Simulator, tmp_path: Path
) -> None:
    rid = new_request_id("drain-routing")
    # No headers from the upstream, and neither they nor a heartbeat are due before the drain ends.
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi\n#sim fault=silent"}], "stream": True}
    with gateway_with(tmp_path, "drain-routing", simulator, DRAINING, SLUICE_UPSTREAM_HEADER_TIMEOUT="60") as gateway:
        response = await drained(gateway, simulator, body, rid)
    assert response.status == 503
    assert (await response.json())["error"]["code"] == "server_shutting_down"
    assert response.headers.get("Retry-After") == "7"
