"""Stream chunks an OpenAI SDK cannot read are dropped and counted, never relayed.

`{"choices": "nope"}` parsed as a JSON object, so `/v1` relayed it byte for byte, and the SDK's
usual loop (`chunk.choices[0].delta.content`) raised AttributeError in the client; the native
dialect dropped such chunks without counting them as malformed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
import structlog
from aiohttp import web
from structlog.testing import capture_logs
from structlog.typing import EventDict

MISSHAPEN = (
    b'{"choices":"nope"}',
    b'{"choices":[null]}',
    b'{"choices":[{"index":0,"delta":"x"}]}',
    b'{"choices":[{"index":0,"delta":{"content":5}}]}',
    b'{"choices":[{"index":0,"delta":{},"finish_reason":7}]}',
    b'{"choices":[{"index":0,"delta":{"tool_calls":"x"}}]}',
)


def delta(fields: bytes, finish: bytes = b"null") -> bytes:
    return (
        b'{"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":%s,"finish_reason":%s}]}'
        % (
            fields,
            finish,
        )
    )


async def misshapen_stream(request: web.Request) -> web.StreamResponse:
    """A stream whose good chunks say "Hello", with every misshapen chunk between them."""
    await request.read()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    events = [delta(b'{"role":"assistant","content":""}'), delta(b'{"content":"Hel"}'), *MISSHAPEN]
    events += [delta(b'{"content":"lo"}'), delta(b"{}", b'"stop"')]
    for event in events:
        await response.write(b"data: " + event + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    return response


def upstream() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", misshapen_stream)
    return app


@pytest.fixture
def logs() -> Iterator[list[EventDict]]:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as events:
        yield events


async def test_an_openai_sdk_reads_a_stream_with_misshapen_chunks_to_its_end(
    upstream_app_client: Callable[..., Any],
) -> None:
    gateway = await upstream_app_client(upstream())
    sdk = openai.AsyncOpenAI(base_url=str(gateway.make_url("/v1")), api_key="unused", max_retries=0)
    try:
        stream = await sdk.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text, finish = "", None
        async for chunk in stream:
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finish = choice.finish_reason or finish
    finally:
        await sdk.close()
    assert (text, finish) == ("Hello", "stop")


async def test_misshapen_chunks_are_counted_as_malformed(
    upstream_app_client: Callable[..., Any], logs: list[EventDict]
) -> None:
    gateway = await upstream_app_client(upstream())
    async with gateway.post("/chat/stream", json={"message": "hi"}) as response:
        body = await response.read()
    assert b"event: done" in body
    (finished,) = [event for event in logs if event["event"] == "request_finished"]
    assert finished["malformed_chunks"] == len(MISSHAPEN)
