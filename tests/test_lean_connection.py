"""A live stream's connection gives back aiohttp's two empty deques, and still serves what follows it.

An in-process server; the client is a raw socket, so that it can pipeline requests behind a stream.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.test_utils import TestServer

from server.sse import SSEResponse

Serve = Callable[[web.Application], Awaitable[TestServer]]
BODY = b'{"model": "gpt-4o"}'
STREAM = b"POST /stream HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n%b" % (len(BODY), BODY)


def plain(name: str) -> bytes:
    """A GET of `/plain/{name}`, pipelined behind the stream."""
    return f"GET /plain/{name} HTTP/1.1\r\nHost: test\r\n\r\n".encode()


def stream_app(seen: list[object]) -> web.Application:
    """`POST /stream` reads its body and streams one event; `GET /plain/{name}` answers its name."""

    async def stream(request: web.Request) -> web.StreamResponse:
        assert await request.read() == BODY
        response = SSEResponse(heartbeat_interval=60, send_timeout=5)
        await response.prepare(request)
        seen.extend((request.protocol._messages, request.content._buffer))
        await response.write(b"data: x\n\n")
        await response.finish()
        return response

    async def named(request: web.Request) -> web.Response:
        return web.Response(text=f"answer {request.match_info['name']}")

    app = web.Application()
    app.router.add_post("/stream", stream)
    app.router.add_get("/plain/{name}", named)
    return app


async def exchange(server: TestServer, request: bytes, until: bytes) -> bytes:
    """Send `request` (one or more requests back to back) and read until `until` arrived."""
    loop = asyncio.get_running_loop()
    with socket.socket() as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, (server.host, server.port))
        await loop.sock_sendall(sock, request)
        received = b""
        while until not in received:
            piece = await asyncio.wait_for(loop.sock_recv(sock, 65536), 10)
            assert piece, f"the connection closed before {until!r}: {received!r}"
            received += piece
        return received


async def test_a_live_stream_holds_neither_an_empty_request_queue_nor_its_read_bodys_buffer(
    aiohttp_server: Serve,
) -> None:
    """Once the stream starts, neither of aiohttp's two per-connection deques is left (about 1.5 KiB).

    Also fails if aiohttp renames either attribute: `release` then leaves both deques in place.
    """
    seen: list[object] = []
    server = await aiohttp_server(stream_app(seen))
    await exchange(server, STREAM, b"\r\n0\r\n\r\n")
    queue, buffer = seen
    assert not isinstance(queue, deque)
    assert not queue
    assert buffer == ()


async def test_requests_pipelined_behind_a_stream_are_answered_in_order(aiohttp_server: Serve) -> None:
    """Two requests sent right behind a stream's, on its connection, are answered after it, in order."""
    server = await aiohttp_server(stream_app([]))
    received = await exchange(server, STREAM + plain("first") + plain("second"), b"answer second")
    first, second = received.find(b"answer first"), received.find(b"answer second")
    assert received.find(b"data: x") < first < second
