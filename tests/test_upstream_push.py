"""UpstreamStream.push hands batches over from the connection's data callback, and stops, resumes and fails cleanly.

Against Sluice's own upstream client and a raw loopback server in this process.
"""

from __future__ import annotations

import asyncio
import contextvars
import select
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from server.chunks import Chunk
from server.errors import UpstreamError
from server.upstreams.http1 import READ_BUFFER_BYTES, Http1Connection
from server.upstreams.stream import UpstreamStream
from tests.conftest import RawClient
from tests.support.raw_upstream import FINISH, LAST_CHUNK, STREAM_HEAD, Exchange, RawUpstream, chunk, token

SECONDS = 10  # a bound far from any real wait here
PROBE: contextvars.ContextVar[str] = contextvars.ContextVar("probe")
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}

Open = Callable[[], Awaitable[tuple[Exchange, UpstreamStream]]]


@pytest.fixture
async def open_stream(raw_upstream: RawUpstream, raw_client: RawClient) -> AsyncIterator[Open]:
    """Open an UpstreamStream whose first token (t0) arrived; the test writes the rest as HTTP chunks."""
    client = raw_client(raw_upstream.url)
    opened: list[UpstreamStream] = []

    async def open_() -> tuple[Exchange, UpstreamStream]:
        opening = asyncio.ensure_future(client.open_stream(CHAT, "rid"))
        exchange = await raw_upstream.next()
        exchange.write(STREAM_HEAD + chunk(token(0)))
        async with asyncio.timeout(SECONDS):
            stream = await opening
        opened.append(stream)
        return exchange, stream

    yield open_
    for stream in opened:
        stream.close()


def _connection(stream: UpstreamStream) -> Http1Connection:
    body = stream._response.body
    assert isinstance(body, Http1Connection)
    return body


class Consumer:
    """Records every batch pushed to it; `full_at_once` stops the push after each, `take_all` never does."""

    def __init__(self) -> None:
        self.batches: list[list[Chunk]] = []
        self.arrived = asyncio.Event()

    def full_at_once(self, batch: list[Chunk]) -> bool:
        self.batches.append(batch)
        self.arrived.set()
        return False

    def take_all(self, batch: list[Chunk]) -> bool:
        self.batches.append(batch)
        self.arrived.set()
        return True

    def texts(self) -> list[str | None]:
        return [chunk.content for batch in self.batches for chunk in batch if chunk.content]

    async def until(self, count: int) -> None:
        """Wait until `count` texts arrived."""
        async with asyncio.timeout(SECONDS):
            while len(self.texts()) < count:
                self.arrived.clear()
                await self.arrived.wait()


async def test_events_are_handed_over_from_the_data_callback_not_a_task(open_stream: Open) -> None:
    exchange, stream = await open_stream()
    tasks: list[asyncio.Task[object] | None] = []
    consumer = Consumer()

    def on_batch(batch: list[Chunk]) -> bool:
        tasks.append(asyncio.current_task())
        return consumer.take_all(batch)

    pushed = stream.push(on_batch)  # the primed first token goes at once, from this task
    exchange.write(chunk(token(1)))
    await consumer.until(2)

    assert tasks[1:] == [None]
    assert not pushed.done()


async def test_a_read_of_many_events_is_handed_over_in_one_batch_not_one_per_http_chunk(open_stream: Open) -> None:
    """A burst's read holds one HTTP chunk per event; each would otherwise be written alone."""
    exchange, stream = await open_stream()
    consumer = Consumer()
    stream.push(consumer.take_all)
    await consumer.until(1)
    burst = 20

    exchange.write(b"".join(chunk(token(n)) for n in range(1, burst + 1)))
    await consumer.until(burst + 1)

    assert consumer.texts() == [f"t{n}" for n in range(burst + 1)]
    assert len(consumer.batches) == 2


async def test_the_callback_runs_in_the_context_of_the_caller_of_push(open_stream: Open) -> None:
    """Logs written while pushing (a malformed chunk's) carry the request's bound fields."""
    exchange, stream = await open_stream()
    seen: list[str | None] = []
    consumer = Consumer()

    def on_batch(batch: list[Chunk]) -> bool:
        seen.append(PROBE.get(None))
        return consumer.take_all(batch)

    PROBE.set("the request's")
    stream.push(on_batch)
    exchange.write(chunk(token(1)))
    await consumer.until(2)

    assert seen == ["the request's", "the request's"]


async def test_a_full_consumer_pauses_the_upstream_and_the_next_push_resumes_it_in_order(open_stream: Open) -> None:
    exchange, stream = await open_stream()
    consumer = Consumer()
    async with asyncio.timeout(SECONDS):
        await stream.push(consumer.full_at_once)  # the primed first token: the client's buffer is full
    transport = _connection(stream).transport
    assert transport is not None
    assert not transport.is_reading()

    count = 4 * READ_BUFFER_BYTES // len(token(1000))  # more than the connection buffers unread
    exchange.write(b"".join(chunk(token(n)) for n in range(1, count)) + chunk(FINISH) + LAST_CHUNK)
    async with asyncio.timeout(SECONDS):
        while not stream.ended:
            await stream.push(consumer.take_all)

    assert consumer.texts() == [f"t{n}" for n in range(count)]
    assert stream.finished


async def test_a_stream_nobody_reads_stops_reading_the_upstream_past_its_small_buffer(open_stream: Open) -> None:
    exchange, stream = await open_stream()
    connection = _connection(stream)
    transport = connection.transport
    assert transport is not None

    arrived = asyncio.Event()
    connection.on_data = arrived.set  # called after each read was buffered (and reading maybe paused)

    # In one write, far more than a read may take: the socket holds more than the buffer at once.
    exchange.write(b"".join(chunk(token(n)) for n in range(1, 16 * READ_BUFFER_BYTES // len(token(1000)))))
    async with asyncio.timeout(SECONDS):
        while transport.is_reading():
            arrived.clear()
            await arrived.wait()

    # Each read takes at most READ_BUFFER_BYTES (uvloop's own reads take up to 256 KiB).
    assert READ_BUFFER_BYTES < len(connection.take()) <= 2 * READ_BUFFER_BYTES


async def test_a_body_cut_mid_stream_fails_the_push_with_a_reset(open_stream: Open) -> None:
    exchange, stream = await open_stream()
    consumer = Consumer()
    pushed = stream.push(consumer.take_all)
    exchange.write(chunk(token(1)) + b"ff\r\ncut short")
    exchange.close()

    with pytest.raises(UpstreamError) as failure:
        async with asyncio.timeout(SECONDS):
            await pushed
    assert failure.value.reason == "reset"
    assert consumer.texts() == ["t0", "t1"]


async def test_what_the_consumer_raises_fails_the_push(open_stream: Open) -> None:
    exchange, stream = await open_stream()
    calls = 0

    def broken(batch: list[Chunk]) -> bool:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise ConnectionResetError("the client left")
        return True

    pushed = stream.push(broken)
    exchange.write(chunk(token(1)))

    with pytest.raises(ConnectionResetError):
        async with asyncio.timeout(SECONDS):
            await pushed


async def test_closing_a_stream_mid_body_closes_the_upstream_connection(
    open_stream: Open, raw_upstream: RawUpstream
) -> None:
    exchange, stream = await open_stream()
    stream.push(Consumer().take_all)

    stream.close()

    async with asyncio.timeout(SECONDS):
        assert await raw_upstream.closed.get() == exchange.connection


async def test_closing_an_unfinished_stream_sends_the_upstream_its_end_before_the_loop_turns_again(
    open_stream: Open,
) -> None:
    """When a crowd leaves, each upstream's end must not wait behind every other departing handler."""
    exchange, stream = await open_stream()
    server_side = exchange.writer.get_extra_info("socket")

    stream.close()
    # Blocking, so the loop cannot turn: only a FIN already sent makes the socket readable.
    readable, _, _ = select.select([server_side.fileno()], [], [], SECONDS)

    assert readable
