"""A client that leaves closes the upstream as its FIN is read (a reset: in connection_lost), before its handler ends.

With a hundred clients leaving in one loop turn, a close that waits for the handler's cancellation
waits behind every other handler's teardown too (bench `crowd`): SSEResponse.on_client_gone (client_gone.py) runs
its callback as the FIN is read instead, and the relay's push path closes the upstream there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from server.sse import SSEResponse

SECONDS = 10  # a bound far from any real wait here


Serve = Callable[..., Awaitable[TestServer]]


async def serve_a_stream(aiohttp_server: Serve, gone: Callable[[web.Request, asyncio.Task[Any]], None]) -> TestServer:
    """A server whose one stream calls `gone(request, handler_task)` from its client-gone hook."""

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        task = asyncio.current_task()
        assert task is not None
        response = SSEResponse(heartbeat_interval=60, send_timeout=60)
        await response.prepare(request)
        response.on_client_gone(lambda: gone(request, task))
        await response.write(b"data: {}\n\n")
        await asyncio.Event().wait()  # until the client leaves
        return response

    app = web.Application()  # the test server cancels handlers of clients that left, as run.py does
    app.router.add_post("/", handler)
    return await aiohttp_server(app)


async def leave_after_the_first_event(server: TestServer) -> None:
    """Open the stream, read its first event, and leave: a FIN, its whole answer so far read."""
    async with aiohttp.ClientSession() as http:
        response = await http.post(server.make_url("/"), data=b"{}")
        await response.content.readuntil(b"\n\n")
        response.close()


async def test_the_client_gone_callback_runs_before_the_handler_is_cancelled(aiohttp_server: Serve) -> None:
    seen: list[dict[str, Any]] = []
    called = asyncio.Event()

    def gone(request: web.Request, task: asyncio.Task[Any]) -> None:
        seen.append({"in_a_task": asyncio.current_task() is not None, "cancelling": task.cancelling()})
        called.set()

    await leave_after_the_first_event(await serve_a_stream(aiohttp_server, gone))

    async with asyncio.timeout(SECONDS):
        await called.wait()
    assert seen == [{"in_a_task": False, "cancelling": 0}]


async def test_the_client_gone_callback_runs_as_the_clients_fin_is_read_while_its_connection_is_open(
    aiohttp_server: Serve,
) -> None:
    # Not a loop turn later from connection_lost, behind the teardowns of others who left first.
    seen: list[bool] = []
    called = asyncio.Event()

    def gone(request: web.Request, task: asyncio.Task[Any]) -> None:
        transport = request.transport
        seen.append(transport is not None and not transport.is_closing())
        called.set()

    await leave_after_the_first_event(await serve_a_stream(aiohttp_server, gone))

    async with asyncio.timeout(SECONDS):
        await called.wait()
    assert seen == [True]


async def test_a_request_without_a_body_on_a_watched_connection_survives_the_clients_fin(
    aiohttp_server: Serve,
) -> None:
    # A watched connection keeps its leave-aware protocol for the requests that follow on it; a
    # GET's body reader is aiohttp's shared empty payload, which has no waiter slot to look in.
    loop = asyncio.get_running_loop()
    errors: list[str] = []
    serving_get = asyncio.Event()

    async def post(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = SSEResponse(heartbeat_interval=60, send_timeout=60)
        await response.prepare(request)
        response.on_client_gone(lambda: None)
        await response.write_eof()
        return response

    async def get(request: web.Request) -> web.StreamResponse:
        serving_get.set()
        await asyncio.Event().wait()  # until the client leaves
        return web.Response()

    app = web.Application()
    app.router.add_post("/", post)
    app.router.add_get("/", get)
    server = await aiohttp_server(app)
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: errors.append(str(context.get("message"))))
    try:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        async with asyncio.timeout(SECONDS):
            await reader.readuntil(b"0\r\n\r\n")  # the POST's whole chunked answer: the connection stays
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await serving_get.wait()
            writer.write_eof()  # the client's FIN while its GET is served
            await reader.read()  # until the gateway closes the connection
        writer.close()
    finally:
        loop.set_exception_handler(previous)

    assert errors == []


async def test_a_callback_unregistered_before_the_client_leaves_is_never_called(aiohttp_server: Serve) -> None:
    called: list[str] = []
    handler_ended = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = SSEResponse(heartbeat_interval=60, send_timeout=60)
        await response.prepare(request)
        unregister = response.on_client_gone(lambda: called.append("gone"))
        unregister()
        try:
            await response.write(b"data: {}\n\n")
            await asyncio.Event().wait()  # until the client leaves: aiohttp cancels the handler
        finally:
            handler_ended.set()
        return response

    app = web.Application()
    app.router.add_post("/", handler)
    await leave_after_the_first_event(await aiohttp_server(app))
    async with asyncio.timeout(SECONDS):
        await handler_ended.wait()
    assert called == []
