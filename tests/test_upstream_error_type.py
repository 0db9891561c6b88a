"""The type of an error the upstream sends mid-stream: OpenAI's own kept, any other Sluice's `upstream_error`.

OpenAI ends a failing stream with `data: {"error": {"message", "type": "server_error", "param",
"code": null}}`. A client of Sluice sees what it would see from OpenAI: the type and the message,
with Sluice's code (`upstream_failed` for none). A type OpenAI does not document stays Sluice's
`upstream_error`. Against `python run.py` in front of a raw upstream that writes the stream byte by byte.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.support.processes import Gateway, start_gateway
from tests.support.raw_upstream import LAST_CHUNK, STREAM_HEAD, RawUpstream, chunk, token
from tests.support.sse import Event, read_events
from tests.support.tasks import running

SECONDS = 10  # a bound far from any real wait here
MESSAGE = "The server had an error while processing your request. Sorry about that!"


def error_event(kind: str, code: str | None = None) -> bytes:
    error = {"message": MESSAGE, "type": kind, "param": None, "code": code}
    return b"data: " + json.dumps({"error": error}).encode() + b"\n\n"


@pytest.fixture
async def raw_gateway(raw_upstream: RawUpstream) -> AsyncIterator[Gateway]:
    """`python run.py` whose one upstream is the test's raw upstream."""
    env = {"AI_INTEGRATIONS_OPENAI_API_KEY": "sk-test", "AI_INTEGRATIONS_OPENAI_BASE_URL": raw_upstream.url}
    with await asyncio.to_thread(start_gateway, env=env) as started:
        yield started


async def failed_stream(
    gateway: Gateway, upstream: RawUpstream, path: str, body: dict[str, Any], end: bytes
) -> list[Event]:
    """The client's events when the upstream sends one token, then `end`, then ends its body."""
    async with aiohttp.ClientSession() as http, running(http.post(gateway.url + path, json=body)) as sent:
        exchange = await upstream.next(SECONDS)
        exchange.write(STREAM_HEAD + chunk(token(0)) + chunk(end) + LAST_CHUNK)
        async with asyncio.timeout(SECONDS):
            response = await sent
            assert response.status == 200
            return [event for event in await read_events(response) if event.data]


async def openai_error(gateway: Gateway, upstream: RawUpstream, end: bytes) -> dict[str, Any]:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    *_, last = await failed_stream(gateway, upstream, "/v1/chat/completions", body, end)
    found: dict[str, Any] = last.json()
    return found


@pytest.mark.parametrize("kind", ["server_error", "rate_limit_exceeded"])
async def test_an_openai_error_type_mid_stream_reaches_the_client_with_its_message_and_sluices_code(
    raw_gateway: Gateway, raw_upstream: RawUpstream, kind: str
) -> None:
    error = await openai_error(raw_gateway, raw_upstream, error_event(kind))
    assert error == {"error": {"message": MESSAGE, "type": kind, "param": None, "code": "upstream_failed"}}


async def test_an_openai_error_type_mid_stream_keeps_the_upstreams_code_when_it_names_one(
    raw_gateway: Gateway, raw_upstream: RawUpstream
) -> None:
    error = await openai_error(raw_gateway, raw_upstream, error_event("server_error", "model_overloaded"))
    assert (error["error"]["type"], error["error"]["code"]) == ("server_error", "model_overloaded")


async def test_a_type_openai_does_not_document_is_sluices_upstream_error(
    raw_gateway: Gateway, raw_upstream: RawUpstream
) -> None:
    error = await openai_error(raw_gateway, raw_upstream, error_event("overloaded_error"))
    assert error == {"error": {"message": MESSAGE, "type": "upstream_error", "param": None, "code": "upstream_failed"}}


async def test_a_native_streams_failed_event_carries_openais_error_type(
    raw_gateway: Gateway, raw_upstream: RawUpstream
) -> None:
    events = await failed_stream(
        raw_gateway, raw_upstream, "/chat/stream", {"message": "hi"}, error_event("server_error")
    )
    last = events[-1]
    assert last.event == "failed"
    assert (last.json()["error"]["type"], last.json()["error"]["message"]) == ("server_error", MESSAGE)
