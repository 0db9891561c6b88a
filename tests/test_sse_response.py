"""The SSE response: its heartbeat timer (it repeats, a client that takes nothing is reported) and its socket options.

The response alone, on an in-process server; clients are raw sockets, so that one can stop reading.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from server.sse import SEND_BUFFER_BYTES, SSEResponse

Serve = Callable[[web.Application], Awaitable[TestServer]]
ServeWith = Callable[..., Awaitable[TestServer]]  # the same, with the server's options
REQUEST = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"


async def open_reader(server: TestServer, receive_buffer: int | None = None) -> socket.socket:
    """A raw client that sent its request; with `receive_buffer`, a small kernel buffer it never reads."""
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (server.host, server.port))
    await asyncio.get_running_loop().sock_sendall(sock, REQUEST)
    return sock


async def test_heartbeats_repeat_every_interval_while_nothing_else_is_written(aiohttp_server: Serve) -> None:
    """Three intervals of silence, three heartbeats: the timer is set again after each one.

    Catches: the heartbeat not rescheduled after it was sent (server/sse.py, `_heartbeat_sent`).
    """
    three = asyncio.Event()
    beats = 0

    def counted() -> None:
        nonlocal beats
        beats += 1
        if beats == 3:
            three.set()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = SSEResponse(heartbeat_interval=0.02, send_timeout=5, on_heartbeat=counted)
        await response.prepare(request)
        await asyncio.wait_for(three.wait(), 10)
        await response.finish()
        return response

    app = web.Application()
    app.router.add_get("/", handler)
    server = await aiohttp_server(app)
    sock = await open_reader(server)
    loop = asyncio.get_running_loop()
    body = b""
    with sock:
        while not body.endswith(b"0\r\n\r\n"):
            piece = await asyncio.wait_for(loop.sock_recv(sock, 65536), 10)
            assert piece, "the connection closed before the body ended"
            body += piece
    assert body.count(b": keep-alive\n\n") >= 3


async def test_a_heartbeat_the_client_does_not_take_within_the_send_timeout_reports_a_stall(
    aiohttp_server: Serve,
) -> None:
    """A heartbeat that finds the client's buffer full waits for room, and calls `on_stalled` after `send_timeout`.

    Catches: the stall not reported (server/sse.py, `_heartbeat_waits`).
    """
    stalled = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = SSEResponse(heartbeat_interval=0.05, send_timeout=0.2, on_stalled=stalled.set)
        await response.prepare(request)
        event = b"data: " + b"x" * 8192 + b"\n\n"
        while response.send_now(event):  # until the client's buffer is over its mark
            pass
        await asyncio.wait_for(stalled.wait(), 10)
        response.abort()
        return response

    app = web.Application()
    app.router.add_get("/", handler)
    server = await aiohttp_server(app)
    with await open_reader(server, receive_buffer=4096):
        await asyncio.wait_for(stalled.wait(), 10)


async def test_a_prepared_stream_sets_the_kernel_backstop_and_a_fixed_send_buffer(aiohttp_server: Serve) -> None:
    """TCP_USER_TIMEOUT at three times the send timeout and a 64 KiB send buffer, on the client's socket.

    Catches: either option not set (server/sse.py, `_set_tcp_user_timeout`).
    """
    seen: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = SSEResponse(heartbeat_interval=60, send_timeout=2)
        await response.prepare(request)
        assert request.transport is not None
        sock = request.transport.get_extra_info("socket")
        seen.set_result(
            (
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
            )
        )
        await response.finish()
        return response

    app = web.Application()
    app.router.add_get("/", handler)
    server = await aiohttp_server(app)
    with await open_reader(server):
        user_timeout, send_buffer = await asyncio.wait_for(seen, 10)
    assert user_timeout == 6000
    assert send_buffer == 2 * SEND_BUFFER_BYTES  # the kernel doubles it for its bookkeeping


async def test_a_keep_alive_connections_later_streams_do_not_set_its_socket_options_again(
    aiohttp_server: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The options are set once per connection, and again when a stream asks for another send timeout.

    Catches: every stream setting them (a socket object and three system calls each), or a
    connection that was never tuned taken for one that was.
    """
    made: list[int] = []

    class CountedSocket(socket.socket):
        """Counts the sockets made around an existing descriptor (the response's); the test client's pass."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if len(args) == 4:
                made.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr("server.sse.socket.socket", CountedSocket)
    timeouts: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        response = SSEResponse(heartbeat_interval=60, send_timeout=float(request.query["send"]))
        await response.prepare(request)
        assert request.transport is not None
        sock = request.transport.get_extra_info("socket")
        timeouts.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT))
        await response.write(b"data: a\n\n")
        await response.finish()
        return response

    app = web.Application()
    app.router.add_get("/", handler)
    server = await aiohttp_server(app)
    url = f"http://{server.host}:{server.port}/"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
        for send in ("2", "2", "3", "3"):
            async with http.get(url, params={"send": send}) as response:
                await asyncio.wait_for(response.read(), 10)
    assert timeouts == [6000, 6000, 9000, 9000]
    assert len(made) == 2  # one for the connection, one for the new timeout
    async with aiohttp.ClientSession() as http:  # a new connection is tuned afresh
        async with http.get(url, params={"send": "3"}) as response:
            await asyncio.wait_for(response.read(), 10)
    assert len(made) == 3


EVENTS = [b"data: a\n\n", b"data: " + b"x" * 300 + b"\n\n", b"data: " + "é".encode() * 40 + b"\n\n"]


async def raw_reply(server: TestServer) -> bytes:
    """The whole raw reply to one request (headers and chunked body), read until the server closes."""
    with await open_reader(server) as sock:
        return await _read_body(sock)


async def test_events_written_at_once_are_framed_as_aiohttps_own_write_frames_them(aiohttp_server: Serve) -> None:
    """`send_now` (the push relay's write) puts the same bytes on the wire as aiohttp's `write`.

    Catches: a wrong chunk frame in send_now's shortcut past aiohttp's writer (server/sse.py).
    """

    async def pushed(request: web.Request) -> web.StreamResponse:
        response = SSEResponse(heartbeat_interval=60, send_timeout=5)
        await response.prepare(request)
        for event in EVENTS:
            response.send_now(event)
        await response.write_eof()
        return response

    async def written(request: web.Request) -> web.StreamResponse:
        response = SSEResponse(heartbeat_interval=60, send_timeout=5)
        await response.prepare(request)
        for event in EVENTS:
            await web.StreamResponse.write(response, event)
        await response.write_eof()
        return response

    replies = []
    for handler in (pushed, written):
        app = web.Application()
        app.router.add_get("/", handler)
        reply = await raw_reply(await aiohttp_server(app))
        replies.append(reply.partition(b"\r\n\r\n")[2])  # the body: the headers carry a date
    assert replies[0] == replies[1]
    assert b"134\r\ndata: " + b"x" * 300 in replies[0]  # 308 bytes: the frame's size is hexadecimal


async def test_a_running_stream_holds_no_header_read_timer(aiohttp_server: ServeWith) -> None:
    """aiohttp's header-read timer, armed when the connection opened, is dropped once the stream starts.

    A timer handle per live stream (about 550 bytes with uvloop) for a deadline that cannot apply.
    """
    seen: list[object] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        response = SSEResponse(heartbeat_interval=60, send_timeout=5)
        await response.prepare(request)
        seen.append(request.protocol._keepalive_handle)
        await response.finish()
        return response

    app = web.Application()
    app.router.add_get("/", handler)
    server = await aiohttp_server(app, keepalive_timeout=60)
    with await open_reader(server) as sock:
        await _read_body(sock)
    assert seen == [None]


async def test_an_idle_connection_after_a_stream_is_closed_at_the_keep_alive_limit(
    aiohttp_server: ServeWith,
) -> None:
    """Once the stream ended, aiohttp arms its keep-alive timer again: an idle client is not kept forever."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = SSEResponse(heartbeat_interval=60, send_timeout=5)
        await response.prepare(request)
        await response.write(b"data: x\n\n")
        await response.finish()
        return response

    app = web.Application()
    app.router.add_get("/", handler)
    server = await aiohttp_server(app, keepalive_timeout=0.2)
    loop = asyncio.get_running_loop()
    with await open_reader(server) as sock:
        await _read_body(sock)
        # The server closes the idle connection: the read sees its end (bounded far from 0.2 s).
        assert await asyncio.wait_for(loop.sock_recv(sock, 65536), 10) == b""


async def _read_body(sock: socket.socket) -> bytes:
    """Read a chunked response, from its headers on, until its last chunk."""
    loop = asyncio.get_running_loop()
    body = b""
    while not body.endswith(b"\r\n0\r\n\r\n"):
        piece = await asyncio.wait_for(loop.sock_recv(sock, 65536), 10)
        assert piece, "the connection closed before the body ended"
        body += piece
    return body


async def test_the_largest_send_timeout_the_settings_accept_still_streams(aiohttp_server: Serve) -> None:
    """A day, the bound on stream.send_timeout: its kernel backstop (3x, in ms) fits the C int the kernel takes.

    Catches: a bound past 715827 s, where setting TCP_USER_TIMEOUT overflowed and every stream answered 500.
    """
    from server.settings.sections import MAX_SEND_TIMEOUT  # imported here: this file is appended to

    seen: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        response = SSEResponse(heartbeat_interval=60, send_timeout=MAX_SEND_TIMEOUT)
        await response.prepare(request)
        assert request.transport is not None
        seen.append(request.transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT))
        await response.write(b"data: a\n\n")
        await response.finish()
        return response

    app = web.Application()
    app.router.add_get("/", handler)
    reply = await raw_reply(await aiohttp_server(app))
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert b"data: a\n\n" in reply
    assert seen == [int(MAX_SEND_TIMEOUT * 3 * 1000)]
