"""Streaming behaviour of `python run.py` against the simulator process, over real sockets.

The in-process test client cancels handlers on disconnect by itself; only real processes show
what the gateway does when a client leaves, stalls or an upstream misbehaves.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import psutil
import pytest

from tests.support.client import ROUTES, new_request_id, sim_wait
from tests.support.processes import Gateway, Simulator, start_gateway
from tests.support.sse import carries_token, iter_events, openai_text, read_events, tokens_text

DIALECTS = ["native", "openai"]


@pytest.fixture(scope="module")
def tight_gateway(simulator: Simulator) -> Iterator[Gateway]:
    """A gateway with short deadlines, for the timeout paths."""
    gateway = start_gateway(
        upstream=simulator,
        env={
            "SLUICE_UPSTREAM_FIRST_TOKEN_TIMEOUT": "1",
            "SLUICE_UPSTREAM_IDLE_TIMEOUT": "1",
            "SLUICE_UPSTREAM_TOTAL_TIMEOUT": "3",
            "SLUICE_STREAM_SEND_TIMEOUT": "1",
            "SLUICE_STREAM_HEARTBEAT_INTERVAL": "0.2",
        },
    )
    yield gateway
    gateway.process.stop()


def post(
    http: aiohttp.ClientSession, gateway: Gateway, dialect: str, message: str, request_id: str, **extra: object
) -> Any:
    path, make_body = ROUTES[dialect]
    return http.post(gateway.url + path, json=make_body(message, **extra), headers={"X-Request-ID": request_id})


def finished(gateway: Gateway, request_id: str) -> dict[str, Any]:
    return gateway.process.wait_for_event("request_finished", request_id=request_id)


# 1. Straight through


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_each_chunk_reaches_the_client_while_the_upstream_is_still_open(
    gateway: Gateway, simulator: Simulator, dialect: str
) -> None:
    rid = new_request_id("through")
    received = []
    async with (
        aiohttp.ClientSession() as http,
        post(http, gateway, dialect, "hi\n#sim tokens=4 fault=hang_mid", rid) as r,
    ):
        async for event in iter_events(r):
            if carries_token(event):
                received.append(event)
            if len(received) == 2:
                break  # the upstream now hangs forever: these two were not held back waiting for more
        record = await sim_wait(http, simulator.url, rid, "opened")
    assert len(received) == 2
    assert record["outcome"] in ("active", "client_aborted")


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_stream_headers_forbid_buffering_and_compression(gateway: Gateway, dialect: str) -> None:
    rid = new_request_id("headers")
    headers = {"X-Request-ID": rid, "Accept-Encoding": "gzip, deflate, br"}
    path, make_body = ROUTES[dialect]
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        async with http.post(gateway.url + path, json=make_body("hi #sim tokens=2"), headers=headers) as response:
            await response.read()
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert "no-cache" in response.headers["Cache-Control"]
    assert "no-transform" in response.headers["Cache-Control"]
    assert response.headers["X-Accel-Buffering"] == "no"
    assert "Content-Encoding" not in response.headers
    assert response.headers["X-Request-ID"] == rid


# 2. Backpressure


async def test_client_that_stops_reading_slows_the_upstream_instead_of_filling_memory(
    gateway: Gateway, simulator: Simulator
) -> None:
    rid = new_request_id("backpressure")
    tokens = 150_000  # about 30 MB of chunks: far more than every socket buffer on the way
    process = psutil.Process(gateway.process.pid)
    rss_before = process.memory_info().rss
    async with aiohttp.ClientSession() as http:
        async with post(http, gateway, "openai", f"hi\n#sim tokens={tokens}", rid) as response:
            paused = await sim_wait(http, simulator.url, rid, "paused", seconds=60)
            rss_paused = process.memory_info().rss
            assert paused["outcome"] == "active"
            assert paused["chunks_sent"] < tokens
            # Whatever the upstream had to offer, the gateway holds only socket-sized buffers.
            assert rss_paused - rss_before < 16 * 1024 * 1024
            events = await read_events(response)
    assert len(openai_text(events).split()) == tokens
    assert events[-1].data == "[DONE]"


async def test_client_that_accepts_nothing_is_cut_after_send_timeout_and_upstream_closed(
    tight_gateway: Gateway, simulator: Simulator
) -> None:
    rid = new_request_id("stalled")
    async with aiohttp.ClientSession() as http:
        async with post(http, tight_gateway, "openai", "hi\n#sim tokens=150000", rid):
            record = await sim_wait(http, simulator.url, rid, "closed", seconds=60)
    assert record["outcome"] == "client_aborted"
    log = finished(tight_gateway, rid)
    assert log["outcome"] == "timeout"
    assert log["error_code"] == "send_timeout"


# 3. Disconnect


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_client_leaving_before_first_token_closes_the_upstream(
    gateway: Gateway, simulator: Simulator, dialect: str
) -> None:
    rid = new_request_id("leave-early")
    async with aiohttp.ClientSession() as http:
        async with post(http, gateway, dialect, "think hard\n#sim fault=hang_first", rid) as response:
            assert response.status == 200
            await sim_wait(http, simulator.url, rid, "opened")
            response.close()  # leave while the upstream has not produced a token
        record = await sim_wait(http, simulator.url, rid, "closed")
    assert record["outcome"] == "client_aborted"
    assert record["chunks_sent"] == 0
    assert finished(gateway, rid)["outcome"] == "client_disconnected"


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_client_leaving_mid_stream_closes_the_upstream_and_logs_tokens_relayed(
    gateway: Gateway, simulator: Simulator, dialect: str
) -> None:
    rid = new_request_id("leave-mid")
    async with aiohttp.ClientSession() as http:
        async with post(http, gateway, dialect, "hi\n#sim tokens=100000 gap_ms=5", rid) as response:
            seen = 0
            async for event in iter_events(response):
                if carries_token(event):
                    seen += 1
                if seen == 3:
                    break
            response.close()
        record = await sim_wait(http, simulator.url, rid, "closed")
    assert record["outcome"] == "client_aborted"
    assert record["chunks_sent"] < 100000
    log = finished(gateway, rid)
    assert log["outcome"] == "client_disconnected"
    assert log["usage"]["counted_by"] == "sluice"
    assert log["usage"]["completion_tokens"] >= 3


async def test_client_leaving_a_non_streaming_chat_closes_the_upstream(gateway: Gateway, simulator: Simulator) -> None:
    rid = new_request_id("leave-chat")
    async with aiohttp.ClientSession() as http:
        request = asyncio.create_task(
            http.post(
                gateway.url + "/chat", json={"message": "x\n#sim fault=hang_first"}, headers={"X-Request-ID": rid}
            )
        )
        await sim_wait(http, simulator.url, rid, "opened")
        request.cancel()  # the client gives up: aiohttp closes its connection
        with pytest.raises(asyncio.CancelledError):
            await request
        record = await sim_wait(http, simulator.url, rid, "closed")
    assert record["outcome"] == "client_aborted"
    assert finished(gateway, rid)["outcome"] == "client_disconnected"


# 4. Heartbeats


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_silent_upstream_gets_heartbeat_comments(tight_gateway: Gateway, dialect: str) -> None:
    rid = new_request_id("heartbeat")
    async with aiohttp.ClientSession() as http:
        async with post(http, tight_gateway, dialect, "slow\n#sim tokens=2 ttft_ms=700", rid) as response:
            events = await read_events(response)
    comments = [e for e in events if e.comment is not None]
    first_token = next(i for i, e in enumerate(events) if carries_token(e))
    assert comments, "no heartbeat while the upstream was silent"
    assert any(events[i].comment is not None for i in range(first_token))
    assert all(e.comment == "keep-alive" for e in comments)


async def test_the_native_retry_hint_opens_the_body_even_when_a_heartbeat_comes_first(tight_gateway: Gateway) -> None:
    rid = new_request_id("retry-first")
    async with aiohttp.ClientSession() as http:
        async with post(http, tight_gateway, "native", "slow\n#sim tokens=2 ttft_ms=700", rid) as response:
            raw = (await response.read()).decode()
    assert raw.startswith("retry: ")
    assert raw.index(": keep-alive") < raw.index("event: token")


async def test_a_stream_starts_once_the_upstream_accepted_not_only_at_its_first_token(simulator: Simulator) -> None:
    # Heartbeats far off: only the upstream's acceptance can start the response before the
    # first-token deadline passes.
    env = {"SLUICE_UPSTREAM_FIRST_TOKEN_TIMEOUT": "1", "SLUICE_STREAM_HEARTBEAT_INTERVAL": "60"}
    with start_gateway(upstream=simulator, env=env) as gateway:
        rid = new_request_id("accepted")
        async with aiohttp.ClientSession() as http:
            async with post(http, gateway, "native", "x\n#sim fault=hang_first", rid) as response:
                status = response.status
                events = [e for e in await read_events(response) if e.comment is None]
    assert status == 200  # the response had started: the deadline is the stream's final event
    assert events[-1].event == "failed"
    assert events[-1].json()["error"]["code"] == "first_token_timeout"


# 5. Timeouts


@pytest.mark.parametrize(
    ("directive", "code"),
    [
        ("fault=hang_first", "first_token_timeout"),
        ("tokens=4 fault=hang_mid", "idle_timeout"),
        ("tokens=100 gap_ms=100", "total_timeout"),
    ],
)
async def test_deadline_ends_native_stream_with_explicit_failure(
    tight_gateway: Gateway, simulator: Simulator, directive: str, code: str
) -> None:
    rid = new_request_id(code)
    async with aiohttp.ClientSession() as http:
        async with post(http, tight_gateway, "native", f"x\n#sim {directive}", rid) as response:
            events = [e for e in await read_events(response) if e.comment is None]
        record = await sim_wait(http, simulator.url, rid, "closed")
    assert events[-1].event == "failed"
    assert events[-1].json()["error"]["code"] == code
    assert record["outcome"] == "client_aborted"  # the upstream was closed, not left running
    assert finished(tight_gateway, rid)["outcome"] == "timeout"


async def test_deadline_ends_openai_stream_with_error_envelope(tight_gateway: Gateway) -> None:
    rid = new_request_id("openai-timeout")
    async with aiohttp.ClientSession() as http:
        async with post(http, tight_gateway, "openai", "x\n#sim fault=hang_first", rid) as response:
            events = [e for e in await read_events(response) if e.comment is None]
    error = events[-1].json()["error"]
    assert error["code"] == "first_token_timeout"
    assert set(error) == {"message", "type", "param", "code"}
    assert all(e.data != "[DONE]" for e in events)


# 6. Explicit endings


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_upstream_cut_mid_stream_ends_with_error_event_never_a_clean_end(gateway: Gateway, dialect: str) -> None:
    rid = new_request_id("cut")
    async with aiohttp.ClientSession() as http, post(http, gateway, dialect, "x\n#sim tokens=6 fault=cut", rid) as r:
        events = [e for e in await read_events(r) if e.comment is None]
    last = events[-1]
    if dialect == "native":
        assert last.event == "failed"
        assert not any(e.event == "done" for e in events)
    else:
        assert "error" in last.json()
        assert not any(e.data == "[DONE]" for e in events)
    assert finished(gateway, rid)["outcome"] == "upstream_error"


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_malformed_upstream_chunk_is_dropped_and_the_stream_completes(gateway: Gateway, dialect: str) -> None:
    rid = new_request_id("malformed")
    async with aiohttp.ClientSession() as http:
        async with post(http, gateway, dialect, "x\n#sim tokens=6 fault=malformed", rid) as response:
            events = [e for e in await read_events(response) if e.comment is None]
    text = tokens_text if dialect == "native" else openai_text
    assert len(text(events).split()) == 6  # every token, around the dropped chunk
    assert (events[-1].event == "done") if dialect == "native" else (events[-1].data == "[DONE]")
    assert gateway.process.wait_for_event("upstream_chunk_malformed", request_id=rid)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_upstream_body_ending_without_done_marker_still_ends_the_stream(gateway: Gateway, dialect: str) -> None:
    rid = new_request_id("no-done")
    async with (
        aiohttp.ClientSession() as http,
        post(http, gateway, dialect, "x\n#sim tokens=3 fault=no_done", rid) as r,
    ):
        events = [e for e in await read_events(r) if e.comment is None]
    assert (events[-1].event == "done") if dialect == "native" else (events[-1].data == "[DONE]")


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_upstream_error_event_mid_stream_is_passed_on_as_final_failure(gateway: Gateway, dialect: str) -> None:
    rid = new_request_id("error-event")
    async with aiohttp.ClientSession() as http:
        async with post(http, gateway, dialect, "x\n#sim tokens=6 fault=error_event", rid) as response:
            events = [e for e in await read_events(response) if e.comment is None]
    assert events[-1].json()["error"]["message"] == "simulated upstream failure"
    if dialect == "native":
        assert events[-1].event == "failed"


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_upstream_rate_limit_before_first_byte_is_429_with_retry_after(gateway: Gateway, dialect: str) -> None:
    rid = new_request_id("429")
    async with aiohttp.ClientSession() as http, post(http, gateway, dialect, "x\n#sim fault=rate_limit", rid) as r:
        body = await r.json()
    assert r.status == 429
    assert r.headers["Retry-After"] == "7"
    assert body["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_upstream_server_error_before_first_byte_is_502(gateway: Gateway, dialect: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with post(http, gateway, dialect, "x\n#sim fault=server_error", new_request_id("500")) as response:
            body = await response.json()
    assert response.status == 502
    assert set(body["error"]) == {"message", "type", "param", "code"}


# 7. Usage


async def test_native_done_event_carries_upstream_usage_and_the_log_has_it(gateway: Gateway) -> None:
    rid = new_request_id("usage")
    async with aiohttp.ClientSession() as http, post(http, gateway, "native", "one two three\n#sim tokens=5", rid) as r:
        events = await read_events(r)
    usage = events[-1].json()["usage"]
    assert usage["completion_tokens"] == 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + 5
    logged = finished(gateway, rid)["usage"]
    assert logged == {**usage, "counted_by": "upstream"}


# 8. Framing


NASTY = "a\n\nevent: forged\ndata: [DONE]\r\n\r\nid: 99\rretry: 1\n:comment\n\n\u2028end"


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_token_text_cannot_forge_or_split_events(gateway: Gateway, dialect: str) -> None:
    rid = new_request_id("framing")
    message = f"#sim echo chunk_chars=5\n{NASTY}"
    async with aiohttp.ClientSession() as http, post(http, gateway, dialect, message, rid) as response:
        events = [e for e in await read_events(response) if e.comment is None]
    if dialect == "native":
        assert tokens_text(events) == NASTY
        assert {e.event for e in events} <= {"token", "done", "message"}
        assert all(e.fields.count("data") <= 1 for e in events)
    else:
        assert openai_text(events) == NASTY
        assert all(e.fields == ["data"] for e in events)
        assert [e.data for e in events].count("[DONE]") == 1
        assert all(json.loads(e.data) for e in events[:-1])


# 9. Pass-through


@pytest.mark.parametrize("stream", [False, True])
async def test_unknown_v1_fields_reach_the_simulator_unchanged(
    gateway: Gateway, simulator: Simulator, stream: bool
) -> None:
    """What the simulator received (its request record) carries the client's unknown fields as sent.

    Catches: server/routes/openai.py building the upstream body from known fields only.
    """
    rid = new_request_id("pass-through")
    messages = [{"role": "user", "content": "hi #sim tokens=2", "brand_new_message_field": [1, "two"]}]
    extension = {"nested": {"deep": [1, 2.5, None, True]}, "text": "ünïcode"}
    body = {"model": "gpt-4o", "messages": messages, "stream": stream, "brand_new_parameter": extension, "seed": 7}
    async with aiohttp.ClientSession() as http:
        async with http.post(gateway.url + "/v1/chat/completions", json=body, headers={"X-Request-ID": rid}) as r:
            assert r.status == 200
            await r.read()
        record = await sim_wait(http, simulator.url, rid, "closed")
    received = json.loads(record["body"])
    assert received["brand_new_parameter"] == extension
    assert received["messages"] == messages
    assert {k: v for k, v in received.items() if k != "stream_options"} == body
