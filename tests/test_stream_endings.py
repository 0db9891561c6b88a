"""What is left behind when a stream ends early: the gateway in-process against a fake upstream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.test_utils import TestClient

from server.app import create_app
from tests.conftest import AiohttpClient, make_settings

Client = TestClient[web.Request, web.Application]
BuildGateway = Callable[..., Awaitable[Client]]

COMPLETIONS = "/v1/chat/completions"
TOKEN = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "gpt-4o",
    "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}],
}


def one_token_then_silence(never: asyncio.Event) -> web.Application:
    """An upstream that sends one token and then nothing, until the test ends."""

    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: " + json.dumps(TOKEN).encode() + b"\n\n")
        await never.wait()
        return response

    app = web.Application()
    app.router.add_post(COMPLETIONS, answer)
    return app


def heartbeat_tasks() -> set[asyncio.Task[object]]:
    """The heartbeat loops running in this event loop (the gateway runs in it, in-process)."""
    return {task for task in asyncio.all_tasks() if task.get_coro().__qualname__.endswith("SSEResponse._ping")}  # type: ignore[union-attr]


async def test_the_heartbeat_stops_when_the_client_leaves_mid_stream(upstream_app_client: BuildGateway) -> None:
    """The heartbeat task ends with its stream, not at its next tick (60 s away here).

    Catches: no `stop_heartbeat()` in stream_chat's `finally` (server/streaming.py): a cancelled
    stream skips `finish()`, and the heartbeat loop sleeps on, holding the response, until it wakes.
    """
    never = asyncio.Event()
    gateway = await upstream_app_client(
        one_token_then_silence(never),
        stream={"heartbeat_interval": 60.0, "send_timeout": 60.0},
        upstream={"first_token_timeout": 60.0, "idle_timeout": 60.0, "total_timeout": 120.0},
    )
    response = await gateway.post("/chat/stream", json={"message": "hi"})
    async for line in response.content:
        if line.startswith(b"data:") and b'"hi"' in line:
            break
    heartbeats = heartbeat_tasks()
    assert len(heartbeats) == 1

    response.close()  # the client leaves: the in-process server cancels the handler

    _, still_running = await asyncio.wait(heartbeats, timeout=5)
    assert not still_running
    never.set()


async def test_the_heartbeat_stops_when_a_browser_stream_reader_leaves(aiohttp_client: AiohttpClient) -> None:
    """A browser stream's connection stops its heartbeat when the client leaves (next tick 60 s away).

    Catches: no `stop_heartbeat()` around serve_stream's follow loop (server/streams/reader.py).
    """
    settings = make_settings(stream={"heartbeat_interval": 60.0, "send_timeout": 60.0})
    gateway: Client = await aiohttp_client(create_app(settings))
    created = await gateway.post("/chat/streams", json={"message": "hi\n#sim tokens=4 fault=hang_mid"})
    response = await gateway.get((await created.json())["url"])
    async for line in response.content:
        if line.startswith(b"event: token"):
            break
    heartbeats = heartbeat_tasks()
    assert len(heartbeats) == 1

    response.close()

    _, still_running = await asyncio.wait(heartbeats, timeout=5)
    assert not still_running
