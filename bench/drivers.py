"""The traffic shapes: clients in a loop, a wave of concurrent streams, clients that leave early."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from typing import Any
from urllib.parse import urlsplit

import orjson

from .config import Api, LoadConfig, Pace
from .reading import MARKERS, Outcome, StreamScan
from .tally import Tally
from .wire import Connection, Response, connect, request_head

PROMPT = "Benchmark prompt: say something."
# Seconds any single request may take before it counts as failed.
REQUEST_TIMEOUT = 120.0
# A stalled reader's kernel receive buffer: a small one, so the stall reaches the proxy within
# milliseconds rather than after megabytes (loopback autotunes receive buffers up to 6 MiB).
STALL_RECEIVE_BUFFER = 64 * 1024


def request_body(api: Api, stream: bool, pace: Pace) -> bytes:
    """The JSON body for `api`, steering the simulated upstream to `pace`."""
    if api is Api.OPENAI:
        body: dict[str, object] = {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": PROMPT}],
            "stream": stream,
            "sim": pace.sim_field(),
        }
    else:
        body = {"message": f"{PROMPT}\n{pace.directive()}", "model": "gpt-4o"}
    return orjson.dumps(body)


class Client:
    """Send one kind of request and note what came back in the tally."""

    def __init__(self, config: LoadConfig, tally: Tally, pace: Pace) -> None:
        url = urlsplit(config.url)
        if url.hostname is None or url.port is None:
            raise ValueError(f"the load generator needs a host and a port: {config.url}")
        self._host, self._port = url.hostname, url.port
        body = request_body(config.api, config.stream, pace)
        self._head = request_head("POST", url.path, url.netloc, body, {"Content-Type": "application/json"})
        self._body = body
        self._stream = config.stream
        self._markers = MARKERS[config.api]
        self._tokens = pace.tokens
        self._tally = tally
        self._ids = itertools.count()
        self._id_prefix = f"bench-{os.getpid()}-{time.monotonic_ns()}-"

    @property
    def tally(self) -> Tally:
        """Where this client notes what came back."""
        return self._tally

    async def send(self, connection: Connection | None, leave_after: float | None = None) -> Connection | None:
        """One request on `connection` (or a new one); return the connection when it can carry another.

        With `leave_after`, the client closes its connection that many seconds after starting.
        """
        tally = self._tally
        tally.started()
        request_id = None if leave_after is None else f"{self._id_prefix}{next(self._ids)}"
        outcome = Outcome(sent_at=time.perf_counter())
        if request_id is not None:
            tally.sent_wall[request_id] = time.time()
        try:
            async with asyncio.timeout(leave_after if leave_after is not None else REQUEST_TIMEOUT):
                if connection is None or connection.closed:
                    connection = await connect(self._host, self._port)
                await self._exchange(connection, outcome, request_id)
            if request_id is not None:
                outcome.error = "ended_before_leaving"
        except TimeoutError:
            if request_id is None or connection is None:
                outcome.error = "timeout"
            else:
                # The client leaves: note the wall-clock time, for the upstream's record to compare with.
                tally.left.append((request_id, time.time()))
                outcome.ended_at = time.perf_counter()
            if connection is not None:
                connection.close()
        except OSError as exc:
            outcome.error = f"{type(exc).__name__}: {exc}"
        expected = self._tokens if self._stream and leave_after is None else None
        tally.ended(outcome, expected_chunks=expected)
        return connection if connection is not None and not connection.closed else None

    async def stall(self) -> tuple[Connection, Outcome] | None:
        """Open a stream, read its headers, then stop reading; None when it did not open."""
        tally = self._tally
        tally.started()
        outcome = Outcome(sent_at=time.perf_counter())
        try:
            connection = await connect(self._host, self._port, receive_buffer=STALL_RECEIVE_BUFFER)
        except OSError as exc:
            outcome.error = f"{type(exc).__name__}: {exc}"
            tally.ended(outcome, expected_chunks=None)
            return None
        loop = asyncio.get_running_loop()
        headed: asyncio.Future[None] = loop.create_future()
        exchange: asyncio.Future[Response] = loop.create_task(
            connection.exchange(self._head + self._body, _StopAfterHead(connection, headed))
        )
        exchange.add_done_callback(_consume)
        waited: set[asyncio.Future[Any]] = {headed, exchange}
        await asyncio.wait(waited, timeout=REQUEST_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        if not headed.done():
            headed.cancel()
            if not exchange.done():
                outcome.error = "stall_not_opened: timeout"
            elif exchange.exception() is not None:
                outcome.error = f"stall_not_opened: {exchange.exception()!r}"
            else:
                outcome.error = f"stall_not_opened: status {exchange.result().status}"
            connection.close()
            tally.ended(outcome, expected_chunks=None)
            return None
        tally.opened(outcome)
        return connection, outcome

    async def _exchange(self, connection: Connection, outcome: Outcome, request_id: str | None) -> None:
        head = self._head
        if request_id is not None:
            head = head[:-2] + f"X-Request-ID: {request_id}\r\n\r\n".encode()
        tally = self._tally
        scan = StreamScan(self._markers, outcome, tally.window, tally.opened) if self._stream else None
        response = await connection.exchange(head + self._body, scan)
        outcome.ended_at = time.perf_counter()
        if response.status != 200:
            outcome.error = f"status_{response.status}: {response.body[:200]!r}"
        elif scan is not None:
            outcome.error = scan.verdict()
        elif self._markers.reply not in response.body:
            outcome.error = f"not_a_reply: {response.body[:200]!r}"
        else:
            outcome.first_at = outcome.ended_at


class _StopAfterHead:
    """A scanner that stops reading the connection once a 200 response's headers arrived."""

    def __init__(self, connection: Connection, headed: asyncio.Future[None]) -> None:
        self._connection = connection
        self._headed = headed

    def head(self) -> None:
        if self._connection.transport is not None:
            self._connection.transport.pause_reading()
        if not self._headed.done():
            self._headed.set_result(None)

    def feed(self, data: bytes, now: float) -> None:
        pass


def _consume(task: asyncio.Future[Response]) -> None:
    if not task.cancelled():
        task.exception()


async def warm_up(client: Client, requests: int) -> None:
    """Send a few requests one after another: lazy imports, first connections, caches."""
    connection = None
    for _ in range(requests):
        connection = await client.send(connection)
    if connection is not None:
        connection.close()


async def run_loop(client: Client, clients: int, stop_at: float, leave_after: float | None = None) -> None:
    """`clients` workers send requests back to back until `stop_at` (perf_counter); the last ones finish."""

    async def worker() -> None:
        connection = None
        while time.perf_counter() < stop_at:
            connection = await client.send(connection, leave_after)
        if connection is not None:
            connection.close()

    await asyncio.gather(*(worker() for _ in range(clients)))


async def run_wave(client: Client, streams: int, ramp_s: float) -> None:
    """Open `streams` streams, each on its own connection, evenly over `ramp_s` seconds; wait for all."""

    async def one() -> None:
        connection = await client.send(None)
        if connection is not None:
            connection.close()

    started = time.perf_counter()
    tasks: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()
    for index in range(streams):
        delay = started + ramp_s * index / streams - time.perf_counter()
        if delay > 0.001:
            await asyncio.sleep(delay)
        tasks.append(loop.create_task(one()))
    await asyncio.gather(*tasks)


async def run_crowd(client: Client, streams: int, rounds: int, leave_after: float) -> None:
    """`rounds` times: `streams` clients arrive at the same instant and leave `leave_after` s later."""
    for index in range(rounds):
        if index:
            await asyncio.sleep(1.0)  # the previous crowd's connections finish closing
        await asyncio.gather(*(client.send(None, leave_after) for _ in range(streams)))
