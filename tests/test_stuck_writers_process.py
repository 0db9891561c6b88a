"""A client that sends requests and never reads their answers holds its connection for a bounded time.

aiohttp bounds nothing while a response is written: such clients, as many as the connection cap,
held every connection busy for good and everyone else got `503 too_many_connections`. Each
connection's socket now carries TCP_USER_TIMEOUT at `stream.send_timeout`
(`lean_connection.limit_unread_responses`), and the kernel drops it once its client took nothing
for that long.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from server.lean_connection import limit_unread_responses
from tests.support.processes import Gateway, Simulator
from tests.support.security import KEY_ALPHA, bearer, start_keyed_gateway

SEND_TIMEOUT = 3.0
# Far above the send timeout, so a loaded machine does not fail a test that works; far below the
# other deadlines (120 s), which would end the connections anyway.
CUT_BOUND = 20.0
FAR = "120"
CAP = 8
SMALL_RECEIVE_BUFFER = 1024
PIPELINED = 1000  # 9.6 MB of answers: more than the kernel's send buffer grows to (4 MiB, tcp_wmem)
# Less than a connection whose client never reads holds in the gateway's kernel once its buffer is
# full (580-710 KB here, with a 1 KiB client window); a client that reads holds none of it for long.
STALLED_BYTES = 512 * 1024
ESTABLISHED = "01"
POLL = 0.05
QUIET_POLLS = 4


@pytest.fixture
def capped(tmp_path: Path, simulator: Simulator) -> Iterator[Gateway]:
    """A keyed gateway with a small connection cap, a short send timeout, and every other deadline far."""
    env = {
        "SLUICE_CONNECTIONS_MAX_CONNECTIONS": str(CAP),
        "SLUICE_STREAM_SEND_TIMEOUT": str(SEND_TIMEOUT),
        "SLUICE_CONNECTIONS_HEADER_TIMEOUT": FAR,
        "SLUICE_CONNECTIONS_BODY_TIMEOUT": FAR,
    }
    gateway = start_keyed_gateway(tmp_path, simulator, env=env)
    yield gateway
    gateway.process.stop()


def _never_reading(port: int, path: str) -> socket.socket:
    """A connection with a tiny receive buffer that pipelines `PIPELINED` keyless GETs of `path` and never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_RECEIVE_BUFFER)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    with contextlib.suppress(BlockingIOError):  # the gateway stopped reading: enough is queued
        sock.send(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode() * PIPELINED)
    return sock


def _send_queues(port: int) -> dict[str, int]:
    """Bytes each of the gateway's connections on `port` holds in the kernel, unsent or unacknowledged, by client."""
    queues = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == ESTABLISHED:
            queues[fields[2]] = int(fields[4].split(":")[0], 16)
    return queues


async def _stalled(port: int) -> None:
    """Return once `CAP` connections hold `STALLED_BYTES` each and none took a byte more for `QUIET_POLLS` polls.

    The kernel's buffer fills a few answers before aiohttp's own does and the handler waits: until
    then the connection goes on to its next request, and a request over the cap refuses it.
    """
    last: dict[str, int] = {}
    quiet = 0
    while quiet < QUIET_POLLS:
        await asyncio.sleep(POLL)
        queues = _send_queues(port)
        full = len(queues) == CAP and min(queues.values()) >= STALLED_BYTES
        quiet = quiet + 1 if full and queues == last else 0
        last = queues


async def _readyz(http: aiohttp.ClientSession, gateway: Gateway) -> int:
    async with http.get(gateway.url + "/readyz") as r:
        return r.status


async def test_a_connection_whose_client_keeps_a_zero_window_is_dropped_by_the_kernel_after_the_limit() -> None:
    # What the gateway relies on, checked on the running kernel: TCP_USER_TIMEOUT counts zero-window
    # probes (the client acknowledges each, with no room), not only unacknowledged data.
    loop = asyncio.get_running_loop()
    lost: asyncio.Future[BaseException | None] = loop.create_future()

    class Writer(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            limit_unread_responses(transport, 1.0)
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(b"x" * (16 << 20))  # far more than the two kernels' buffers hold

        def connection_lost(self, exc: BaseException | None) -> None:
            if not lost.done():
                lost.set_result(exc)

    server = await loop.create_server(Writer, "127.0.0.1", 0)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_RECEIVE_BUFFER)
    try:
        client.connect(server.sockets[0].getsockname())
        started = time.monotonic()
        async with asyncio.timeout(CUT_BOUND):
            error = await lost
        assert isinstance(error, TimeoutError | OSError), error  # ETIMEDOUT, not a close of its own
        assert time.monotonic() - started >= 0.5  # the kernel waited, it did not refuse at once
    finally:
        client.close()
        server.close()


@contextlib.asynccontextmanager
async def _cap_of_never_reading(gateway: Gateway) -> AsyncIterator[list[socket.socket]]:
    """The cap's every connection busy writing, its client's window closed; the clients' sockets.

    Only then the first connection over the cap: one earlier would have the next of their requests refused.
    """
    port = int(gateway.url.rsplit(":", 1)[1])
    stuck = [_never_reading(port, "/static/app.js") for _ in range(CAP)]
    try:
        async with asyncio.timeout(CUT_BOUND):
            await _stalled(port)
        yield stuck
    finally:
        for sock in stuck:
            sock.close()


async def test_a_request_over_a_cap_of_clients_that_never_read_closes_one_of_them_and_is_served(
    capped: Gateway,
) -> None:
    # They held the cap until the kernel dropped each (stream.send_timeout), and a client reopening
    # them as fast kept everyone else out for good.
    async with _cap_of_never_reading(capped), aiohttp.ClientSession() as http:
        async with http.get(capped.url + "/v1/models", headers=bearer(KEY_ALPHA)) as r:
            assert r.status == 200  # was 503 too_many_connections until the send timeout


async def test_clients_that_never_read_their_answers_are_cut_after_the_send_timeout_and_free_the_cap(
    capped: Gateway,
) -> None:
    port = int(capped.url.rsplit(":", 1)[1])
    async with _cap_of_never_reading(capped) as stuck:
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(CUT_BOUND):
                while True:  # until the gateway counts them gone
                    if await _readyz(http, capped) == 200:
                        break
                    await asyncio.sleep(POLL)
            async with http.get(capped.url + "/v1/models", headers=bearer(KEY_ALPHA)) as r:
                assert r.status == 200
        # Closed on the gateway's side, the clients never having read: no connection of theirs is
        # established there any more. (Not read from the clients' end: a socket the kernel dropped
        # sends nothing, and the client learns it only when its window opens and the gateway's
        # kernel answers with a reset, which with a 1 KiB window can wait on the persist timer.)
        clients = {f"0100007F:{sock.getsockname()[1]:04X}" for sock in stuck}
        async with asyncio.timeout(CUT_BOUND):
            while True:
                if not clients & _send_queues(port).keys():
                    break
                await asyncio.sleep(POLL)
