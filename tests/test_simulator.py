"""The simulated upstream: wire format, determinism, steering, faults, stats."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from server.simulator import STATS_KEY, Pace, create_simulator_app
from server.simulator.answer import MAX_WHOLE_REPLY_TOKENS
from server.simulator.plan import (
    DEFAULT_CHUNK_CHARS,
    Fault,
    PlanError,
    parse_directive,
    resolve_plan,
    split_directive,
)
from server.simulator.script import VOCABULARY
from server.simulator.stats import Outcome, StatsRegistry
from tests.support.processes import start_gateway

Client = TestClient[Any, Any]
REPO_ROOT = Path(__file__).resolve().parents[1]
NASTY = 'a"b\\c\nd\re\r\nf\n\ndata: [DONE]\n\n\tg\x00h\x1f\u2028\u2029é漢字🙂\ufeff</script>{}[]'


async def simulator(aiohttp_client: AiohttpClient, **kwargs: Any) -> Client:
    """An in-process simulator, with its test-only /_sim routes, behind a test client."""
    kwargs.setdefault("control", True)
    return await aiohttp_client(create_simulator_app(**kwargs))


def chat_body(content: str = "hello world", **extra: Any) -> dict[str, Any]:
    """A minimal chat completion request."""
    return {"model": "m", "messages": [{"role": "user", "content": content}], **extra}


async def post_chat(
    client: Client, content: str = "hello world", request_id: str | None = None, **extra: Any
) -> aiohttp.ClientResponse:
    """POST /v1/chat/completions."""
    headers = {"X-Request-ID": request_id} if request_id else {}
    return await client.post("/v1/chat/completions", json=chat_body(content, **extra), headers=headers)


def split_events(raw: bytes) -> list[bytes]:
    """SSE body into `data: ...` payloads (without the prefix)."""
    assert raw.endswith(b"\n\n"), raw[-80:]
    events = raw[:-2].split(b"\n\n")
    assert all(event.startswith(b"data: ") for event in events), events
    return [event[len(b"data: ") :] for event in events]


def contents(events: list[bytes]) -> list[str]:
    """Content deltas of the parsed chunks, in order."""
    pieces = []
    for event in events:
        if event == b"[DONE]":
            continue
        chunk = json.loads(event)
        for choice in chunk.get("choices", []):
            if "content" in choice["delta"] and "role" not in choice["delta"]:
                pieces.append(choice["delta"]["content"])
    return pieces


async def stream_events(client: Client, content: str, **extra: Any) -> list[bytes]:
    """A whole streamed reply, as event payloads."""
    resp = await post_chat(client, content, stream=True, **extra)
    assert resp.status == 200
    return split_events(await resp.read())


async def read_events_until_error(resp: aiohttp.ClientResponse) -> tuple[list[bytes], bool]:
    """Read events until the body ends; True when it ended in a payload error."""
    buffer = b""
    try:
        async for data in resp.content.iter_any():
            buffer += data
    except aiohttp.ClientPayloadError:
        return split_events(buffer), True
    return split_events(buffer), False


async def wait_for(client: Client, request_id: str, until: str) -> dict[str, Any]:
    """Long-poll the simulator for a request state."""
    resp = await client.get(f"/_sim/requests/{request_id}?until={until}&timeout=10")
    body: dict[str, Any] = await resp.json()
    return body


async def test_models_list(aiohttp_client: AiohttpClient) -> None:
    client = await simulator(aiohttp_client, models=["a", "b"])
    resp = await client.get("/v1/models")
    assert resp.status == 200
    assert await resp.json() == {
        "object": "list",
        "data": [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": "sluice-simulator"} for m in ("a", "b")
        ],
    }


async def test_api_key_required_when_configured(aiohttp_client: AiohttpClient) -> None:
    client = await simulator(aiohttp_client, api_key="sk-right")
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": "sk-right"}):
        resp = await client.post("/v1/chat/completions", json=chat_body(), headers=headers)
        assert resp.status == 401
        body = await resp.json()
        assert body["error"]["type"] == "invalid_request_error"
        assert body["error"]["code"] == "invalid_api_key"
        assert (await client.get("/v1/models", headers=headers)).status == 401
    ok = {"Authorization": "Bearer sk-right"}
    assert (await client.post("/v1/chat/completions", json=chat_body(), headers=ok)).status == 200
    assert (await client.get("/v1/models", headers=ok)).status == 200


async def test_deterministic_text(aiohttp_client: AiohttpClient) -> None:
    client = await simulator(aiohttp_client, defaults=Pace(tokens=12))
    first = contents(await stream_events(client, "same prompt"))
    again = contents(await stream_events(client, "same prompt"))
    other = contents(await stream_events(client, "another prompt"))
    assert first == again
    assert first != other
    assert len(first) == 12
    assert first[0] in VOCABULARY
    assert all(piece.startswith(" ") and piece[1:] in VOCABULARY for piece in first[1:])
    # A fresh app (another process, in effect) says the same thing.
    fresh = await simulator(aiohttp_client, defaults=Pace(tokens=12))
    assert contents(await stream_events(fresh, "same prompt")) == first
    plain = await (await post_chat(client, "same prompt")).json()
    assert plain["choices"][0]["message"]["content"] == "".join(first)


async def test_stream_format_is_byte_exact(aiohttp_client: AiohttpClient) -> None:
    client = await simulator(aiohttp_client)
    resp = await post_chat(client, "hi there", stream=True, sim={"tokens": 2})
    assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    events = split_events(await resp.read())
    first = json.loads(events[0])
    chunk_id, created = first["id"], first["created"]
    assert chunk_id.startswith("chatcmpl-sim")
    head = (
        f'{{"id":"{chunk_id}","object":"chat.completion.chunk","created":{created},'
        f'"model":"m","system_fingerprint":"fp_sim","choices":[{{"index":0,"delta":'
    ).encode()
    words = contents(events)
    assert events == [
        head + b'{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}]}',
        head + b'{"content":' + json.dumps(words[0]).encode() + b'},"logprobs":null,"finish_reason":null}]}',
        head + b'{"content":' + json.dumps(words[1]).encode() + b'},"logprobs":null,"finish_reason":null}]}',
        head + b'{},"logprobs":null,"finish_reason":"stop"}]}',
        b"[DONE]",
    ]


async def test_usage_chunk_only_with_include_usage(aiohttp_client: AiohttpClient) -> None:
    client = await simulator(aiohttp_client)
    without = await stream_events(client, "one two three", sim={"tokens": 3})
    assert all(b'"usage"' not in event for event in without)

    events = await stream_events(
        client,
        "one two three",
        sim={"tokens": 3},
        stream_options={"include_usage": True},
    )
    assert events[-1] == b"[DONE]"
    *chunks, usage_chunk = [json.loads(event) for event in events[:-1]]
    assert all(chunk["usage"] is None for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 3,
        "total_tokens": 6,
    }
    assert events[-2].endswith(b'"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":3,"total_tokens":6}}')


async def test_non_streaming_completion(aiohttp_client: AiohttpClient) -> None:
    client = await simulator(aiohttp_client, defaults=Pace(tokens=4))
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a b c"}, {"type": "image_url"}]},
    ]
    resp = await client.post("/v1/chat/completions", json={"model": "x", "messages": messages})
    assert resp.status == 200
    body = await resp.json()
    assert body["id"].startswith("chatcmpl-sim")
    assert body["object"] == "chat.completion"
    assert body["model"] == "x"
    assert body["system_fingerprint"] == "fp_sim"
    (choice,) = body["choices"]
    assert choice["index"] == 0
    assert choice["logprobs"] is None
    assert choice["finish_reason"] == "stop"
    message = choice["message"]
    assert message["role"] == "assistant"
    assert message["refusal"] is None
    assert message["annotations"] == []
    assert len(message["content"].split(" ")) == 4
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}


async def test_length_truncation(aiohttp_client: AiohttpClient) -> None:
    client = await simulator(aiohttp_client, defaults=Pace(tokens=10))
    full = contents(await stream_events(client, "p"))
    for limit_field in ("max_tokens", "max_completion_tokens"):
        limit: dict[str, Any] = {limit_field: 4}
        events = await stream_events(client, "p", **limit)
        assert contents(events) == full[:4]
        assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
        body = await (await post_chat(client, "p", **limit)).json()
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["usage"]["completion_tokens"] == 4
    events = await stream_events(client, "p", max_tokens=10)
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "stop"


def choice_deltas(events: list[bytes]) -> list[dict[str, Any]]:
    """Every choice of every chunk before [DONE], in the order sent."""
    return [choice for event in events if event != b"[DONE]" for choice in json.loads(event)["choices"]]


async def test_stream_with_n_ends_every_choice_with_its_finish_reason_then_done(aiohttp_client: AiohttpClient) -> None:
    client = await simulator(aiohttp_client)
    events = await stream_events(client, "hi", n=2, sim={"tokens": 3}, max_tokens=2)
    assert events[-1] == b"[DONE]"
    *earlier, last_of_0, last_of_1 = choice_deltas(events)
    assert (last_of_0["index"], last_of_0["finish_reason"]) == (0, "length")
    assert (last_of_1["index"], last_of_1["finish_reason"]) == (1, "length")
    assert [choice["finish_reason"] for choice in earlier] == [None] * len(earlier)


async def test_stream_with_n_sends_one_chunk_per_choice_at_each_token(aiohttp_client: AiohttpClient) -> None:
    client = await simulator(aiohttp_client)
    events = await stream_events(client, "hi", n=2, sim={"tokens": 3})
    tokens = [choice for choice in choice_deltas(events) if choice["delta"].get("content")]
    assert [choice["index"] for choice in tokens] == [0, 1, 0, 1, 0, 1]
    by_choice = ["".join(c["delta"]["content"] for c in tokens if c["index"] == index) for index in (0, 1)]
    # Choice 0 is the n=1 reply; the other has words of its own.
    assert by_choice[0] == "".join(contents(await stream_events(client, "hi", sim={"tokens": 3})))
    assert by_choice[1] != by_choice[0]


async def test_completion_with_n_has_n_choices(aiohttp_client: AiohttpClient) -> None:
    client = await simulator(aiohttp_client, defaults=Pace(tokens=4))
    body = await (await post_chat(client, "hi", n=3)).json()
    assert [choice["index"] for choice in body["choices"]] == [0, 1, 2]
    assert [choice["finish_reason"] for choice in body["choices"]] == ["stop"] * 3
    assert all(len(choice["message"]["content"].split(" ")) == 4 for choice in body["choices"])


async def test_usage_counts_the_tokens_of_every_choice(aiohttp_client: AiohttpClient) -> None:
    client = await simulator(aiohttp_client, defaults=Pace(tokens=4))
    body = await (await post_chat(client, "one two", n=3)).json()
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 12, "total_tokens": 14}
    events = await stream_events(client, "one two", n=3, stream_options={"include_usage": True})
    assert json.loads(events[-2])["usage"] == body["usage"]


@pytest.mark.parametrize("n", [0, 129, True, 1.5, "2"])
async def test_n_outside_1_to_128_is_400_naming_n(aiohttp_client: AiohttpClient, n: object) -> None:
    client = await simulator(aiohttp_client)
    resp = await post_chat(client, n=n)
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "n"


def test_openai_sdk_streams_n_choices_from_sluice_on_its_simulated_model() -> None:
    with (
        start_gateway() as gateway,  # no key: Sluice answers from its built-in simulated model
        openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-unused", max_retries=0) as sdk,
    ):
        stream = sdk.chat.completions.create(
            model="gpt-4o", n=2, stream=True, messages=[{"role": "user", "content": "hi"}]
        )
        chunks = list(stream)
    finished = {
        choice.index: choice.finish_reason for chunk in chunks for choice in chunk.choices if choice.finish_reason
    }
    assert finished == {0: "stop", 1: "stop"}


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"[]", b'{"model":"m"}', b'{"model":"m","messages":[]}', b'{"messages":[{}]}'],
)
async def test_invalid_request_is_400(aiohttp_client: AiohttpClient, raw: bytes) -> None:
    client = await simulator(aiohttp_client)
    resp = await client.post("/v1/chat/completions", data=raw)
    assert resp.status == 400
    body = await resp.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] is None


async def test_fault_rate_limit(aiohttp_client: AiohttpClient) -> None:
    client = await simulator(aiohttp_client)
    resp = await post_chat(client, stream=True, sim={"fault": "rate_limit"})
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "7"
    error = (await resp.json())["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")


async def test_fault_server_error(aiohttp_client: AiohttpClient) -> None:
    client = await simulator(aiohttp_client)
    resp = await post_chat(client, "#sim fault=server_error")
    assert resp.status == 500
    assert (await resp.json())["error"]["type"] == "server_error"


async def test_fault_bad_request(aiohttp_client: AiohttpClient) -> None:
    client = await simulator(aiohttp_client)
    resp = await post_chat(client, stream=True, sim={"fault": "bad_request"})
    assert resp.status == 400
    assert await resp.json() == {
        "error": {
            "message": "simulated bad request",
            "type": "invalid_request_error",
            "param": "messages",
            "code": None,
        }
    }


async def test_fault_unauthorized(aiohttp_client: AiohttpClient) -> None:
    client = await simulator(aiohttp_client)
    resp = await post_chat(client, sim={"fault": "unauthorized"})
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "invalid_api_key"


async def test_fault_cut_stream(aiohttp_client: AiohttpClient, caplog: pytest.LogCaptureFixture) -> None:
    client = await simulator(aiohttp_client)
    resp = await post_chat(client, stream=True, request_id="cut-1", sim={"tokens": 6, "fault": "cut"})
    assert resp.status == 200
    events, broken = await read_events_until_error(resp)
    assert broken
    assert len(contents(events)) == 3
    assert b"[DONE]" not in events
    assert all(b'finish_reason":"' not in event for event in events)
    record = await wait_for(client, "cut-1", "closed")
    assert (record["outcome"], record["chunks_sent"]) == ("fault", 3)
    # aiohttp drops the write_eof on the closed transport without logging an error.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_fault_cut_non_streaming(aiohttp_client: AiohttpClient) -> None:
    client = await simulator(aiohttp_client)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post_chat(client, sim={"fault": "cut"})


async def test_fault_hang_first(aiohttp_client: AiohttpClient) -> None:
    client = await simulator(aiohttp_client)
    resp = await post_chat(client, stream=True, request_id="hang-1", sim={"fault": "hang_first"})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    record = await wait_for(client, "hang-1", "opened")
    assert (record["outcome"], record["chunks_sent"]) == ("active", 0)
    # Absence can only be checked against a deadline; the record above is the sync point.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(resp.content.readany(), 0.05)
    resp.close()
    record = await wait_for(client, "hang-1", "closed")
    assert (record["outcome"], record["timed_out"]) == ("client_aborted", False)


async def test_fault_hang_mid(aiohttp_client: AiohttpClient) -> None:
    client = await simulator(aiohttp_client)
    resp = await post_chat(client, stream=True, request_id="hang-2", sim={"tokens": 4, "fault": "hang_mid"})
    received = b""
    # Role event plus half of the four tokens.
    while received.count(b"\n\n") < 3:
        received += await resp.content.readany()
    assert len(contents(split_events(received))) == 2
    record = await wait_for(client, "hang-2", "opened")
    assert (record["outcome"], record["chunks_sent"]) == ("active", 2)
    resp.close()
    assert (await wait_for(client, "hang-2", "closed"))["outcome"] == "client_aborted"


async def test_fault_hang_non_streaming(aiohttp_client: AiohttpClient) -> None:
    client = await simulator(aiohttp_client)
    pending = asyncio.create_task(post_chat(client, request_id="hang-3", sim={"fault": "hang_mid"}))
    assert (await wait_for(client, "hang-3", "opened"))["outcome"] == "active"
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    assert (await wait_for(client, "hang-3", "closed"))["outcome"] == "client_aborted"


async def test_fault_malformed(aiohttp_client: AiohttpClient) -> None:
    client = await simulator(aiohttp_client)
    events = await stream_events(client, "x", sim={"tokens": 4, "fault": "malformed"})
    # role, 2 tokens, the broken event, 2 tokens, finish, [DONE]
    assert events[3] == b'{"id": oops not json'
    good = events[:3] + events[4:]
    assert len(contents(good)) == 4
    assert events[-1] == b"[DONE]"


async def test_fault_no_done(aiohttp_client: AiohttpClient) -> None:
    client = await simulator(aiohttp_client)
    events = await stream_events(
        client,
        "x",
        sim={"tokens": 2, "fault": "no_done"},
        stream_options={"include_usage": True},
    )
    assert b"[DONE]" not in events
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "stop"
    assert json.loads(events[-1])["usage"]["completion_tokens"] == 2


async def test_fault_error_event(aiohttp_client: AiohttpClient) -> None:
    client = await simulator(aiohttp_client)
    events = await stream_events(client, "x", sim={"tokens": 4, "fault": "error_event"})
    assert len(contents(events[:-1])) == 2
    assert json.loads(events[-1]) == {
        "error": {
            "message": "simulated upstream failure",
            "type": "server_error",
            "param": None,
            "code": "upstream_failed",
        }
    }


async def test_echo_round_trips_nasty_characters(aiohttp_client: AiohttpClient) -> None:
    client = await simulator(aiohttp_client)
    lone_surrogate = "\ud800"
    for text in (NASTY, NASTY + lone_surrogate):
        events = await stream_events(client, "#sim echo chunk_chars=3\n" + text)
        pieces = contents(events)
        assert "".join(pieces) == text
        assert [len(piece) for piece in pieces[:-1]] == [3] * (len(pieces) - 1)
        body = await (await post_chat(client, text, sim={"echo": True})).json()
        assert body["choices"][0]["message"]["content"] == text


async def test_echo_default_chunking_and_truncation(aiohttp_client: AiohttpClient) -> None:
    client = await simulator(aiohttp_client)
    text = "0123456789" * 3
    pieces = contents(await stream_events(client, text, sim={"echo": True}))
    assert pieces == [text[i : i + DEFAULT_CHUNK_CHARS] for i in range(0, 30, DEFAULT_CHUNK_CHARS)]
    events = await stream_events(client, text, sim={"echo": True}, max_tokens=2)
    assert "".join(contents(events)) == text[:16]
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"


def test_directive_parsing() -> None:
    assert split_directive("hello\n#sim tokens=5 echo\r\nworld") == (
        " tokens=5 echo\r",
        "hello\nworld",
    )
    assert split_directive("#sim") == ("", "")
    assert split_directive("#simulate this\nno") == (None, "#simulate this\nno")
    assert split_directive("  #sim tokens=1") == (None, "  #sim tokens=1")
    assert parse_directive(" tokens=5 gap_ms=10 ttft_ms=0 fault=cut echo zzz=1") == {
        "tokens": "5",
        "gap_ms": "10",
        "ttft_ms": "0",
        "fault": "cut",
        "echo": True,
        "zzz": "1",
    }
    plan = resolve_plan(
        Pace(ttft_ms=1, gap_ms=2, tokens=3),
        parse_directive("tokens=5 gap_ms=10 fault=cut echo chunk_chars=3 unknown=1"),
        {"tokens": 7, "fault": "none"},
    )
    assert (plan.tokens, plan.ttft_ms, plan.gap_ms) == (7, 1.0, 10.0)
    assert (plan.fault, plan.echo, plan.chunk_chars) == (Fault.NONE, True, 3)


@pytest.mark.parametrize(
    "bad",
    [
        {"tokens": "x"},
        {"tokens": -1},
        {"tokens": True},
        {"gap_ms": "nan"},
        {"ttft_ms": -5},
        {"fault": "oops"},
        {"echo": "maybe"},
        {"chunk_chars": 0},
    ],
)
def test_directive_rejects_bad_values(bad: dict[str, object]) -> None:
    with pytest.raises(PlanError):
        resolve_plan(Pace(), bad, {})


async def test_directive_in_last_user_message_only(aiohttp_client: AiohttpClient) -> None:
    client = await simulator(aiohttp_client, defaults=Pace(tokens=5))
    messages = [
        {"role": "user", "content": "#sim tokens=1"},
        {"role": "assistant", "content": "#sim tokens=2"},
        {"role": "user", "content": "question\n#sim tokens=3"},
    ]
    body = {"model": "m", "messages": messages, "stream": True}
    events = split_events(await (await client.post("/v1/chat/completions", json=body)).read())
    assert len(contents(events)) == 3
    # The body field wins over the directive.
    body["sim"] = {"tokens": 4}
    events = split_events(await (await client.post("/v1/chat/completions", json=body)).read())
    assert len(contents(events)) == 4
    resp = await post_chat(client, "#sim tokens=lots")
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "sim.tokens"


async def test_a_reply_not_streamed_over_the_token_cap_is_refused_naming_sim_tokens(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await simulator(aiohttp_client)
    resp = await post_chat(client, f"#sim tokens={MAX_WHOLE_REPLY_TOKENS + 1}")
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["param"] == "sim.tokens"
    assert f"at most {MAX_WHOLE_REPLY_TOKENS} tokens" in error["message"]


async def test_the_token_cap_of_a_reply_not_streamed_counts_every_choice(aiohttp_client: AiohttpClient) -> None:
    client = await simulator(aiohttp_client)
    half = MAX_WHOLE_REPLY_TOKENS // 2
    assert (await post_chat(client, f"#sim tokens={half}", n=2)).status == 200
    assert (await post_chat(client, f"#sim tokens={half + 1}", n=2)).status == 400


async def test_max_tokens_brings_a_long_reply_not_streamed_under_the_token_cap(aiohttp_client: AiohttpClient) -> None:
    client = await simulator(aiohttp_client)
    resp = await post_chat(client, "#sim tokens=99999999999999999999", max_tokens=5)
    assert resp.status == 200
    assert (await resp.json())["choices"][0]["finish_reason"] == "length"


async def test_a_streamed_reply_may_be_longer_than_the_token_cap(aiohttp_client: AiohttpClient) -> None:
    client = await simulator(aiohttp_client)
    resp = await post_chat(client, "#sim tokens=99999999999999999999", stream=True)
    assert resp.status == 200
    assert (await resp.content.readuntil(b"\n\n")).startswith(b"data: ")
    resp.close()


async def test_stats_and_long_poll_after_client_abort(aiohttp_client: AiohttpClient) -> None:
    client = await simulator(aiohttp_client)
    # The poll starts before the request exists and waits for it to appear.
    poll = asyncio.create_task(wait_for(client, "abort-1", "closed"))
    resp = await post_chat(client, stream=True, request_id="abort-1", sim={"tokens": 5, "gap_ms": 60_000})
    received = b""
    while received.count(b"\n\n") < 2:  # role event and the first token
        received += await resp.content.readany()
    resp.close()
    record = await poll
    assert record["timed_out"] is False
    assert record["request_id"] == "abort-1"
    assert record["model"] == "m"
    assert record["stream"] is True
    assert record["outcome"] == "client_aborted"
    assert record["chunks_sent"] == 1
    assert record["opened_at"] <= record["first_token_at"] <= record["closed_at"]
    assert record["paused"] is False

    await (await post_chat(client, request_id="done-1")).read()
    stats = await (await client.get("/_sim/stats")).json()
    assert {k: stats[k] for k in ("opened", "completed", "aborted", "active")} == {
        "opened": 2,
        "completed": 1,
        "aborted": 1,
        "active": 0,
    }
    assert [s["request_id"] for s in stats["streams"]] == ["abort-1", "done-1"]
    assert stats["streams"][1]["stream"] is False


async def test_long_poll_times_out(aiohttp_client: AiohttpClient) -> None:
    client = await simulator(aiohttp_client)
    resp = await client.get("/_sim/requests/nobody?until=opened&timeout=0")
    assert resp.status == 404
    assert await resp.json() == {"request_id": "nobody", "timed_out": True}
    assert (await client.get("/_sim/requests/x?until=sometime")).status == 400


async def test_reset_clears_stats(aiohttp_client: AiohttpClient) -> None:
    client = await simulator(aiohttp_client)
    await (await post_chat(client)).read()
    assert (await client.post("/_sim/reset")).status == 200
    stats = await (await client.get("/_sim/stats")).json()
    assert (stats["opened"], stats["completed"], stats["streams"]) == (0, 0, [])


async def test_backpressure_marks_paused(aiohttp_client: AiohttpClient) -> None:
    client = await simulator(aiohttp_client)
    # ~20 MB of events against a client that reads nothing: buffers fill up.
    resp = await post_chat(client, stream=True, request_id="slow-1", sim={"tokens": 100_000})
    record = await wait_for(client, "slow-1", "paused")
    assert record["paused"] is True
    assert record["outcome"] == "active"
    resp.close()
    assert (await wait_for(client, "slow-1", "closed"))["outcome"] == "client_aborted"


async def test_generated_request_ids_are_recorded(aiohttp_client: AiohttpClient) -> None:
    client = await simulator(aiohttp_client)
    resp = await post_chat(client)
    request_id = resp.headers["X-Request-ID"]
    await resp.read()
    stats = await (await client.get("/_sim/stats")).json()
    assert [s["request_id"] for s in stats["streams"]] == [request_id]
    assert client.app is not None
    assert client.app[STATS_KEY].snapshot()["completed"] == 1


async def test_pacing_delays_tokens(aiohttp_client: AiohttpClient) -> None:
    client = await simulator(aiohttp_client, defaults=Pace(ttft_ms=40, gap_ms=15, tokens=3))
    await stream_events(client, "x", request_id="paced-1")
    record = await wait_for(client, "paced-1", "closed")
    # Lower bounds only: sleeps never end early, but may end late on a busy machine.
    assert record["first_token_at"] - record["opened_at"] >= 0.035
    assert record["closed_at"] - record["first_token_at"] >= 0.025


def test_stats_memory_is_bounded() -> None:
    stats = StatsRegistry(capacity=10, listed=4)
    active = stats.open("still-running", "m", stream=True)
    for number in range(30):
        stats.close(stats.open(f"r{number}", "m", stream=True), Outcome.COMPLETED)
    snapshot = stats.snapshot()
    assert len(stats) <= 10
    assert stats.find("still-running") is active
    assert [s["request_id"] for s in snapshot["streams"]] == ["r26", "r27", "r28", "r29"]
    assert (snapshot["opened"], snapshot["completed"], snapshot["active"]) == (31, 30, 1)


async def test_control_routes_are_only_added_when_asked(aiohttp_client: AiohttpClient) -> None:
    plain = await simulator(aiohttp_client, control=False)

    assert (await plain.get("/_sim/stats")).status == 404
    assert (await plain.post("/_sim/reset")).status == 404


async def test_command_line_server(aiohttp_client: AiohttpClient) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server.simulator",
        "--port",
        "0",
        "--tokens",
        "3",
        "--api-key",
        "k",
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await process.stdout.readline()).decode()
        assert line.startswith("simulator listening on http://127.0.0.1:")
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer k"}) as session:
            url = line.split()[-1] + "/v1/chat/completions"
            async with session.post(url, json=chat_body(stream=True)) as resp:
                assert len(contents(split_events(await resp.read()))) == 3
        process.send_signal(signal.SIGTERM)
        assert await process.wait() == 0
        assert await process.stdout.read() == b""
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
