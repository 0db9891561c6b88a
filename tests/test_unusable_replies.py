"""A reply Sluice cannot relay goes to the pool's next upstream, and counts against its breaker.

A stream compressed though none was asked for, an event past `max_upstream_event_bytes`, and a
completion whose choices carry no message: each used to end the request there (502, or a `failed`
event), with the breaker none the wiser, so a pool kept sending its share of requests to the
upstream that sent it. The gateway runs in-process, in front of a pool of two fake upstreams: the
first answers the unusable reply, the second a good one; one failure opens a breaker for long.
"""

from __future__ import annotations

import gzip
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.settings import load_settings
from tests.conftest import TEST_CONFIG, AiohttpClient
from tests.support.sse import openai_text, read_events
from tests.test_middleware import AccessLog, access_log

Client = TestClient[web.Request, web.Application]
__all__ = ["access_log"]  # a fixture, used by name
COMPLETIONS = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]
EVENT_LIMIT = 4096  # bytes; the pool's max_upstream_event_bytes

GOOD_STREAM = (
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":"fine"},"finish_reason":null}]}\n\n'
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o",'
    b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    b"data: [DONE]\n\n"
)
GOOD_COMPLETION = {
    "id": "c",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


def sse(body: bytes, **headers: str) -> web.Response:
    return web.Response(body=body, headers={"Content-Type": "text/event-stream", **headers})


async def good(request: web.Request) -> web.StreamResponse:
    if (await request.json()).get("stream"):
        return sse(GOOD_STREAM)
    return web.json_response(GOOD_COMPLETION)


async def compressed_stream(request: web.Request) -> web.StreamResponse:
    await request.read()
    # Sent as it is: aiohttp would otherwise compress it again on its own.
    response = sse(gzip.compress(GOOD_STREAM), **{"Content-Encoding": "gzip"})
    response.enable_compression(force=None)
    return response


async def oversized_event(request: web.Request) -> web.StreamResponse:
    await request.read()
    # Larger than one read of the upstream's stream (16 KiB), so the limit meets it before it ends.
    return sse(b'data: {"choices":[{"index":0,"delta":{"content":"' + b"x" * (EVENT_LIMIT * 64) + b'"}}]}\n\n')


async def choice_without_message(request: web.Request) -> web.StreamResponse:
    await request.read()
    return web.json_response({**GOOD_COMPLETION, "choices": [{"index": 0, "finish_reason": "stop"}]})


BuildPool = Callable[[Callable[[web.Request], Awaitable[web.StreamResponse]]], Awaitable[tuple[Client, list[int]]]]


@pytest.fixture
def pool(aiohttp_server: Callable[..., Any], aiohttp_client: AiohttpClient, tmp_path: Path) -> BuildPool:
    """A gateway whose pool is an upstream answering `unusable` (asked first) and a good one; the first's calls."""

    async def build(
        unusable: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> tuple[Client, list[int]]:
        calls: list[int] = []

        async def counted(request: web.Request) -> web.StreamResponse:
            calls.append(1)
            return await unusable(request)

        first, second = web.Application(), web.Application()
        first.router.add_post(COMPLETIONS, counted)
        second.router.add_post(COMPLETIONS, good)
        first_server, second_server = await aiohttp_server(first), await aiohttp_server(second)
        config = tmp_path / "pool.toml"
        config.write_text(
            TEST_CONFIG.read_text()
            + f"""
[[upstreams]]
name = "first"
base_url = "{first_server.make_url("/v1")}"
# Drawn first all but once in a thousand: the pool picks by weight, and this one must be asked.
weight = 1000.0

[[upstreams]]
name = "second"
base_url = "{second_server.make_url("/v1")}"
"""
        )
        settings = load_settings(
            config,
            environ={"AI_INTEGRATIONS_OPENAI_API_KEY": "sk-test-key-never-logged"},
            overrides={
                "routing": {"breaker_failures": 1, "breaker_cooldown_seconds": 600.0},
                "connections": {"max_upstream_event_bytes": EVENT_LIMIT},
            },
        )
        client: Client = await aiohttp_client(create_app(settings))
        return client, calls

    return build


async def stream_text(client: Client) -> str:
    body = {"model": "gpt-4o", "messages": MESSAGES, "stream": True}
    async with client.post(COMPLETIONS, json=body) as response:
        assert response.status == 200
        return openai_text(await read_events(response))


@pytest.mark.parametrize("unusable", [compressed_stream, oversized_event], ids=["compressed", "oversized_event"])
async def test_a_stream_the_first_upstream_cannot_give_is_answered_by_the_next_and_opens_its_breaker(
    pool: BuildPool, unusable: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> None:
    client, first_calls = await pool(unusable)

    texts = [await stream_text(client) for _ in range(3)]

    assert texts == ["fine"] * 3
    assert len(first_calls) == 1  # its breaker opened at its one failure


async def null_choice(request: web.Request) -> web.StreamResponse:
    await request.read()
    return web.json_response({**GOOD_COMPLETION, "choices": [None]})


async def brotli_encoded(request: web.Request) -> web.StreamResponse:
    await request.read()  # an encoding Sluice does not decode (it asks for none)
    return web.Response(
        body=b"\x0b\x02\x80{}\x03", headers={"Content-Type": "application/json", "Content-Encoding": "br"}
    )


@pytest.mark.parametrize(
    "unusable",
    [choice_without_message, null_choice, brotli_encoded],
    ids=["choice_without_message", "null_choice", "brotli_encoded"],
)
async def test_a_completion_the_first_upstream_cannot_give_is_answered_by_the_next_and_opens_its_breaker(
    pool: BuildPool, unusable: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> None:
    client, first_calls = await pool(unusable)

    replies = []
    for _ in range(3):
        async with client.post(COMPLETIONS, json={"model": "gpt-4o", "messages": MESSAGES}) as response:
            assert response.status == 200
            replies.append((await response.json())["choices"][0]["message"]["content"])

    assert replies == ["fine"] * 3
    assert len(first_calls) == 1


def answering(completion: dict[str, Any]) -> web.Application:
    """A lone upstream that answers every chat request with `completion`."""

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(completion)

    app = web.Application()
    app.router.add_post(COMPLETIONS, answer)
    return app


async def test_a_completion_with_null_usage_counts_is_answered_on_chat_with_zeros(
    upstream_app_client: Callable[..., Awaitable[Client]],
) -> None:
    usage = {"prompt_tokens": None, "completion_tokens": 1, "total_tokens": None}
    gateway = await upstream_app_client(answering({**GOOD_COMPLETION, "usage": usage}))

    async with gateway.post("/chat", json={"message": "hi"}) as response:
        assert response.status == 200
        reply = await response.json()

    assert (reply["response"], reply["usage"]) == (
        "fine",
        {"prompt_tokens": 0, "completion_tokens": 1, "total_tokens": 0},
    )


async def test_a_completion_chat_cannot_read_is_502_malformed_reply_and_logged_as_an_upstream_error(
    upstream_app_client: Callable[..., Awaitable[Client]], access_log: AccessLog
) -> None:
    # Its message's content a list: a completion to /v1, not a reply /chat can give.
    choice = {"index": 0, "message": {"role": "assistant", "content": [{"type": "text"}]}, "finish_reason": "stop"}
    gateway = await upstream_app_client(answering({**GOOD_COMPLETION, "choices": [choice]}))

    async with gateway.post("/chat", json={"message": "hi"}) as response:
        assert response.status == 502
        assert (await response.json())["error"]["code"] == "upstream_malformed_reply"

    [line] = await access_log.finished(1)
    assert (line["status"], line["outcome"]) == (502, "upstream_error")


async def test_a_completion_without_messages_that_holds_an_error_passes_the_error_on(
    upstream_app_client: Callable[..., Awaitable[Client]],
) -> None:
    error = {"message": "The server is overloaded.", "type": "server_error", "code": "overloaded"}
    gateway = await upstream_app_client(answering({**GOOD_COMPLETION, "choices": [{}], "error": error}))

    async with gateway.post(COMPLETIONS, json={"model": "gpt-4o", "messages": MESSAGES}) as response:
        assert response.status == 502
        passed_on = (await response.json())["error"]

    assert (passed_on["message"], passed_on["code"]) == ("The server is overloaded.", "overloaded")
