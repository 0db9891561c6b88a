"""What is left behind when a stream ends early: the gateway in-process against a fake upstream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from server.access import RequestRecord
from server.app import create_app
from server.guard import StreamGuard
from server.sse import SSEResponse
from server.upstreams.parser import ResponseParser
from tests.conftest import AiohttpClient, make_settings
from tests.support.garbage import cyclic_garbage

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


async def read_whole(request: Awaitable[aiohttp.ClientResponse]) -> bytes:
    """The body of the answer to `request`."""
    return await (await request).read()


@pytest.fixture
def prepared_streams(monkeypatch: pytest.MonkeyPatch) -> list[tuple[SSEResponse, asyncio.Task[object]]]:
    """Every SSE response prepared in this test, with the handler task that prepared it (in-process gateway)."""
    seen: list[tuple[SSEResponse, asyncio.Task[object]]] = []
    prepare = SSEResponse.prepare

    async def recorded(self: SSEResponse, request: web.BaseRequest) -> object:
        task = asyncio.current_task()
        assert task is not None
        seen.append((self, task))
        return await prepare(self, request)

    monkeypatch.setattr(SSEResponse, "prepare", recorded)
    return seen


def heartbeat_pending(stream: SSEResponse) -> bool:
    """Whether `stream`'s heartbeat is still scheduled (read afresh: the property changes under the test)."""
    return stream.heartbeat_pending


async def test_the_heartbeat_stops_when_the_client_leaves_mid_stream(
    upstream_app_client: BuildGateway, prepared_streams: list[tuple[SSEResponse, asyncio.Task[object]]]
) -> None:
    """The heartbeat timer is cancelled with its stream, not left to fire at its next tick (60 s away here).

    Catches: no `stop_heartbeat()` in stream_chat's `finally` (server/chat_call.py): a cancelled
    stream skips `finish()`, and the heartbeat stays scheduled, holding the response, until it fires.
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
    [(stream, handler)] = prepared_streams
    assert heartbeat_pending(stream)

    response.close()  # the client leaves: the in-process server cancels the handler

    _, still_running = await asyncio.wait({handler}, timeout=5)
    assert not still_running
    assert not heartbeat_pending(stream)
    never.set()


async def test_the_heartbeat_stops_when_a_browser_stream_reader_leaves(
    aiohttp_client: AiohttpClient, prepared_streams: list[tuple[SSEResponse, asyncio.Task[object]]]
) -> None:
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
    [(stream, handler)] = [(s, t) for s, t in prepared_streams if s.heartbeat_pending]

    response.close()

    _, still_running = await asyncio.wait({handler}, timeout=5)
    assert not still_running
    assert not heartbeat_pending(stream)


async def test_a_client_gone_while_the_response_is_prepared_is_an_ordinary_disconnect(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that leaves as the stream's headers go out is logged as client_disconnected, no traceback.

    The transport is closed just before the real `prepare`, as when the peer's reset arrives
    before aiohttp has cancelled the handler: the header write raises ClientConnectionResetError.
    Catches: `response.prepare` in stream_chat (server/chat_call.py) letting that error out of the
    handler, where the middleware's errors step logs `request_failed` with a traceback.
    """
    prepare = SSEResponse.prepare

    async def leave_then_prepare(self: SSEResponse, request: web.BaseRequest) -> object:
        assert request.transport is not None
        request.transport.close()
        return await prepare(self, request)

    monkeypatch.setattr(SSEResponse, "prepare", leave_then_prepare)
    # The handler logs before aiohttp drops the connection, so the logs are complete once the client sees that.
    with capture_logs() as logs, pytest.raises(aiohttp.ClientError):
        await read_whole(client.post("/chat/stream", json={"message": "hi"}))

    assert [log["event"] for log in logs if log["log_level"] in ("error", "critical")] == []
    finished = next(log for log in logs if log["event"] == "request_finished")
    assert finished["outcome"] == "client_disconnected"
    assert finished["status"] == 499


def _own(garbage: list[object]) -> list[str]:
    """The kinds of the gateway's own objects in `garbage` (not the in-process simulator's, nor asyncio's)."""
    return sorted(
        {
            type(o).__qualname__
            for o in garbage
            if type(o).__module__.startswith("server.") and not type(o).__module__.startswith("server.simulator")
        }
    )


# Streams: a cut mid-stream and before the first token, an error event, a connection reset before
# the headers, a 500 and a 429; calls that do not stream: a 500, a cut and a reply that is not JSON.
UPSTREAM_FAULTS = [
    (True, "fault=cut fault_at=3"),
    (True, "fault=cut fault_at=0"),
    (True, "fault=error_event fault_at=3"),
    (True, "fault=reset"),
    (True, "fault=server_error"),
    (True, "fault=rate_limit"),
    (False, "fault=server_error"),
    (False, "fault=cut"),
    (False, "fault=malformed"),
]


@pytest.mark.parametrize(("stream", "fault"), UPSTREAM_FAULTS)
async def test_a_failed_call_leaves_no_cycle_for_the_collector(client: Client, stream: bool, fault: str) -> None:
    """A call whose upstream failed is freed by reference counting too, request and all.

    A raised error's traceback holds the frames it passed through: kept by anything those frames
    reach, it made a cycle with the whole request's objects (about 80 per failed stream).
    Catches: the push keeping its future (server/upstreams/push.py), the relay events keeping
    their failure (server/relay_events.py), the routing's locals keeping the last error
    (server/upstreams/attempts.py, `_route`, `_try_model`), the mapped error of a stream or a call
    (server/chat_call.py), and the upstream connection's failure handed to its reader or its
    waiting request (server/upstreams/http1.py).
    """
    content = f"x\n#sim tokens=20 gap_ms=1 {fault}"
    body = {"model": "gpt-4o", "stream": stream, "messages": [{"role": "user", "content": content}]}
    await read_whole(client.post(COMPLETIONS, json=body))  # warm: first-request caches are not garbage
    with cyclic_garbage() as garbage:
        for _ in range(3):
            await read_whole(client.post(COMPLETIONS, json=body))
    assert _own(garbage) == []


@pytest.mark.parametrize("path", ["/chat/stream", COMPLETIONS])
async def test_a_finished_stream_leaves_no_cycle_for_the_collector(client: Client, path: str) -> None:
    """A stream's response, guard and record are freed by reference counting when it ends.

    Garbage that only the collector can free is what makes its pauses long under load (bench/,
    streams-1k); a cycle per request also triggers the collections. Catches: the guard keeping
    the response's abort after the stream (server/guard.py, `close`); the upstream response's
    parser keeping httptools' parser once complete (server/upstreams/parser.py, `feed`).
    """
    body: dict[str, object] = {"message": "hi"}
    if path == COMPLETIONS:
        body = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    await read_whole(client.post(path, json=body))  # warm: first-request caches are not garbage
    with cyclic_garbage() as garbage:
        for _ in range(3):
            await read_whole(client.post(path, json=body))
    kinds = (SSEResponse, StreamGuard, RequestRecord, ResponseParser)
    assert [type(o).__name__ for o in garbage if isinstance(o, kinds)] == []
