"""The drain's end of a browser-stream reader and its client leaving, in the same loop turn.

A draining instance ends each reader of a stream generated elsewhere with the shutdown event
(`DrainEnd` in server/streams/reader.py): its ask cancels the reader's wait, and the reader
swallows that cancellation alone. When the client leaves in the same turn, aiohttp cancels the
same task too (handler cancellation, as run.py serves), and the reader must end as a reader whose
client left: no error or traceback, one access line and one count, and a drain that is not held
up by it. The reader here follows a stream a real `run.py` generates through a real redis-server.

In-process, on purpose: which of the two reaches the reader's task first is decided inside one
loop turn, which a `run.py` process and a client outside it cannot choose (a signal and a socket
reach its loop in whatever order the kernel reports them). Here the test runs on the server's own
(asyncio) loop, whose ready callbacks run in the order they were queued: it resets a raw client
connection and ends the readers in a chosen order within one turn. It ends them with
`Lifecycle.end_all`, the drain's ending of readers (`drain()` runs it once its live requests are
over, a second signal at once), as a drain's loop turn cannot be chosen from outside; the drain
then run finds the reader gone. The last test is the process's side: a `run.py` whose reader
resets as SIGTERM arrives, both waiting for it as its loop resumes, still exits 0 at once, quietly.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import aiohttp
import psutil
import pytest
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from server.app import create_app
from server.keys import LIFECYCLE
from server.lifecycle import Lifecycle
from server.sse import SSEResponse
from tests.conftest import make_settings
from tests.support.processes import Gateway, ManagedProcess, Simulator, start_gateway
from tests.support.servers import RedisServer

SECONDS = 10.0  # a bound far from any real wait here
DRAIN_TIMEOUT = 60.0  # the reader's end must not wait for it
# One token, then a minute of nothing: the reader waits for the next event in `DrainEnd`'s block.
HELD = "held\n#sim tokens=3 gap_ms=60000"
READ_ROUTE = 'route="/chat/streams/{stream_id}"'
TURNS = 100  # loop turns for the server to read a reset already in its socket (it takes one or two)
Writes = list[tuple[bool, bytes]]


@pytest.fixture
def producer(simulator: Simulator, redis_server: RedisServer) -> Iterator[Gateway]:
    """The instance that generates the stream (its upstream's silence outlasts the test)."""
    env = {"SLUICE_REDIS_URL": redis_server.url, "SLUICE_UPSTREAM_IDLE_TIMEOUT": "120"}
    with start_gateway(upstream=simulator, env=env) as gateway:
        yield gateway


@pytest.fixture
async def reading(aiohttp_server: Callable[..., Awaitable[TestServer]], redis_server: RedisServer) -> TestServer:
    """The instance that reads the stream and drains, in-process."""
    settings = make_settings(redis={"url": redis_server.url}, server={"drain_timeout": DRAIN_TIMEOUT})
    return await aiohttp_server(create_app(settings))


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> Writes:
    """Every write a stream's response makes (events, the body's end), and whether its client had gone then."""
    made: Writes = []
    send_now, write_eof = SSEResponse.send_now, SSEResponse.write_eof

    def spied_send_now(response: SSEResponse, data: bytes) -> bool:
        made.append((response.client_gone, data))
        return send_now(response, data)

    async def spied_write_eof(response: SSEResponse, data: bytes = b"") -> None:
        made.append((response.client_gone, data))
        await write_eof(response, data)

    monkeypatch.setattr(SSEResponse, "send_now", spied_send_now)
    monkeypatch.setattr(SSEResponse, "write_eof", spied_write_eof)
    return made


async def held_stream(producer: Gateway) -> str:
    async with aiohttp.ClientSession() as http:
        async with http.post(producer.url + "/chat/streams", json={"message": HELD}) as response:
            assert response.status == 201, await response.text()
            return str((await response.json())["id"])


async def open_reader(address: tuple[str, int], stream_id: str) -> socket.socket:
    """A raw connection reading the stream, once it got the first token: its reader waits from then on."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    # Closed with a reset, as a client that vanished: the server reads the loss at its next poll.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    received = b""
    try:
        await loop.sock_connect(sock, address)
        request = f"GET /chat/streams/{stream_id} HTTP/1.1\r\nHost: sluice\r\nAccept: text/event-stream\r\n\r\n"
        await loop.sock_sendall(sock, request.encode())
        async with asyncio.timeout(SECONDS):
            while not re.search(rb"event: token\r?\n.*\r?\n\r?\n", received):
                chunk = await loop.sock_recv(sock, 65536)
                assert chunk, received
                received += chunk
        assert received.startswith(b"HTTP/1.1 200"), received
    except BaseException:
        sock.close()
        raise
    return sock


def address(server: TestServer) -> tuple[str, int]:
    assert server.port is not None
    return server.host, server.port


def server_transport(server: TestServer, sock: socket.socket) -> asyncio.Transport:
    """The server's end of the connection `sock` opened."""
    port = sock.getsockname()[1]
    assert server.runner is not None
    assert server.runner.server is not None
    for handler in server.runner.server.connections:
        transport = handler.transport
        if transport is not None and transport.get_extra_info("peername")[1] == port:
            return transport
    raise AssertionError("no server connection for the reader")


async def until_closing(transport: asyncio.Transport) -> None:
    """Return once the server read the client's reset: its `connection_lost`, which cancels the handler, is queued."""
    for _ in range(TURNS):
        if transport.is_closing():
            return
        await asyncio.sleep(0)  # one loop turn, and its poll
    raise AssertionError(f"the server did not read the reset within {TURNS} loop turns")


async def drain(lifecycle: Lifecycle) -> None:
    async with asyncio.timeout(SECONDS):  # far below the drain's own 60 s
        await lifecycle.drain(DRAIN_TIMEOUT)


async def requests_counted(server: TestServer) -> float:
    """`sluice_requests_total` of the route readers read a stream on (GET), every status."""
    async with aiohttp.ClientSession() as http, http.get(server.make_url("/metrics")) as response:
        text = await response.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("sluice_requests_total{") and READ_ROUTE in line and 'method="GET"' in line
    )


async def assert_ended_once_quietly(
    server: TestServer, logs: list[MutableMapping[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    """No reader left, no warning, error or traceback (the gateway's or aiohttp's), one access line and one count."""
    assert server.app[LIFECYCLE].readers == 0
    assert [(log["event"], log["log_level"]) for log in logs if log["log_level"] not in ("debug", "info")] == []
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []
    assert len([log for log in logs if log["event"] == "request_finished" and log["method"] == "GET"]) == 1
    assert await requests_counted(server) == 1


async def test_a_reader_whose_client_left_in_the_turn_the_drain_ends_it_writes_nothing_and_ends_once(
    reading: TestServer, producer: Gateway, writes: Writes, caplog: pytest.LogCaptureFixture
) -> None:
    """The loop has read the reset (the transport closing, aiohttp's cancellation queued next) when
    the drain ends the reader: both cancellations are pending as the reader's task wakes, and the
    client's must win.
    """
    caplog.set_level(logging.WARNING)
    lifecycle = reading.app[LIFECYCLE]
    sock = await open_reader(address(reading), await held_stream(producer))
    with sock, capture_logs() as logs:
        transport = server_transport(reading, sock)
        sock.close()
        await until_closing(transport)
        assert lifecycle.readers == 1  # aiohttp has not told the handler yet
        lifecycle.end_all()
        await drain(lifecycle)
    assert [data for gone, data in writes if gone] == []  # the shutdown event included
    await assert_ended_once_quietly(reading, logs, caplog)


async def test_a_reader_the_drain_ended_whose_client_leaves_in_that_turn_logs_no_error_and_ends_once(
    reading: TestServer, producer: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    """The drain ends the reader, then the client resets at once: the reader's task wakes to the
    drain's ask alone, and meets the client's leaving as it catches up with the store.

    It used to try to write the shutdown event then: aiohttp's cancellation could be lost in that
    read (redis-py wrote each command under `asyncio.wait_for`, which on Python 3.11 drops a
    cancellation that lands as the command completes), and aiohttp refused a write to the gone
    connection. Sluice's Redis connections now let that cancellation through (shared/link.py), so
    the write is no longer reached here; what the test keeps checking is that the reader neither
    fails nor logs as if it had, and ends once.
    """
    caplog.set_level(logging.WARNING)
    lifecycle = reading.app[LIFECYCLE]
    sock = await open_reader(address(reading), await held_stream(producer))
    with sock, capture_logs() as logs:
        assert lifecycle.readers == 1
        lifecycle.end_all()
        sock.close()
        await drain(lifecycle)
    await assert_ended_once_quietly(reading, logs, caplog)


async def test_a_reader_the_drain_ended_logs_the_code_its_client_received(
    reading: TestServer, producer: Gateway
) -> None:
    # The access line said status 200 and no error_code: nothing told how the stream ended for it.
    lifecycle = reading.app[LIFECYCLE]
    sock = await open_reader(address(reading), await held_stream(producer))
    with sock, capture_logs() as logs:
        lifecycle.end_all()
        await drain(lifecycle)
    (line,) = [log for log in logs if log["event"] == "request_finished" and log["method"] == "GET"]
    assert (line["outcome"], line["error_code"]) == ("shutdown", "server_shutting_down")


def stopped(process: ManagedProcess) -> None:
    """Stop `process` (SIGSTOP) and return once it is stopped: what reaches it now waits for its next poll."""
    process.signal(signal.SIGSTOP)
    watched = psutil.Process(process.pid)
    for _ in range(int(SECONDS / 0.01)):
        if watched.status() == psutil.STATUS_STOPPED:
            return
        time.sleep(0.01)
    raise AssertionError("the gateway did not stop")


async def test_an_instance_whose_reader_resets_as_sigterm_arrives_exits_0_at_once_without_error(
    simulator: Simulator, redis_server: RedisServer, producer: Gateway
) -> None:
    env = {"SLUICE_REDIS_URL": redis_server.url, "SLUICE_SERVER_DRAIN_TIMEOUT": str(DRAIN_TIMEOUT)}
    loop = asyncio.get_running_loop()
    with start_gateway(upstream=simulator, env=env) as other:
        stream_id = await held_stream(producer)
        host, port = other.url.removeprefix("http://").split(":")
        with await open_reader((host, int(port)), stream_id) as sock:
            stopped(other.process)
            try:
                sock.close()  # the reset waits in the stopped gateway's socket
                other.process.signal(signal.SIGTERM)
            finally:
                other.process.signal(signal.SIGCONT)  # one poll reports both
            began = loop.time()
            status = await asyncio.to_thread(other.process.wait, SECONDS)
            took = loop.time() - began
    reads = [e for e in other.process.events("request_finished") if e["path"] == f"/chat/streams/{stream_id}"]
    assert status == 0
    assert took < SECONDS  # far below its 60 s drain timeout
    assert [e["event"] for e in other.process.events() if e.get("level") not in ("debug", "info")] == []
    assert not [line for line in other.process.lines if "Traceback" in line]
    assert len(reads) == 1
