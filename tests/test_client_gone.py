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


async def test_the_client_gone_callback_runs_before_the_handler_is_cancelled(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    seen: list[dict[str, Any]] = []
    called = asyncio.Event()
    handler_task: list[asyncio.Task[Any]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        task = asyncio.current_task()
        assert task is not None
        handler_task.append(task)
        response = SSEResponse(heartbeat_interval=60, send_timeout=60)
        await response.prepare(request)

        def gone() -> None:
            seen.append({"in_a_task": asyncio.current_task() is not None, "cancelling": task.cancelling()})
            called.set()

        response.on_client_gone(gone)
        await response.write(b"data: {}\n\n")
        await asyncio.Event().wait()  # until the client leaves
        return response

    app = web.Application()  # the test server cancels handlers of clients that left, as run.py does
    app.router.add_post("/", handler)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as http:
        response = await http.post(server.make_url("/"), data=b"{}")
        await response.content.readuntil(b"\n\n")
        response.close()  # the client leaves

    async with asyncio.timeout(SECONDS):
        await called.wait()
    assert seen == [{"in_a_task": False, "cancelling": 0}]


async def test_the_client_gone_callback_runs_as_the_clients_fin_is_read_while_its_connection_is_open(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    # Not a loop turn later from connection_lost, behind the teardowns of others who left first.
    seen: list[bool] = []
    called = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = SSEResponse(heartbeat_interval=60, send_timeout=60)
        await response.prepare(request)

        def gone() -> None:
            transport = request.transport
            seen.append(transport is not None and not transport.is_closing())
            called.set()

        response.on_client_gone(gone)
        await response.write(b"data: {}\n\n")
        await asyncio.Event().wait()  # until the client leaves
        return response

    app = web.Application()
    app.router.add_post("/", handler)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as http:
        response = await http.post(server.make_url("/"), data=b"{}")
        await response.content.readuntil(b"\n\n")
        response.close()  # the client leaves: a FIN, its whole answer so far read

    async with asyncio.timeout(SECONDS):
        await called.wait()
    assert seen == [True]
