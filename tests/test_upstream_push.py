"""UpstreamStream.push hands batches over from aiohttp's data callback, and stops, resumes and fails cleanly.

Against a real aiohttp client and server in this process: push leans on aiohttp's StreamReader
internals (server/upstreams/push.py), and these tests pin what it relies on.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from server.chunks import Chunk
from server.upstreams.client import READ_BUFFER_BYTES
from server.upstreams.stream import UpstreamStream

SECONDS = 10  # a bound far from any real wait here
PROBE: contextvars.ContextVar[str] = contextvars.ContextVar("probe")


def _token(n: int) -> bytes:
    return b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": f"t{n}"}}]}).encode() + b"\n\n"


FINISH = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
CUT = b""  # sent to the upstream's queue: drop the connection mid-body


class Upstream:
    """An SSE upstream that writes what the test puts on its queue, each piece flushed alone."""

    def __init__(self) -> None:
        self.pieces: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        while (piece := await self.pieces.get()) is not None:
            if piece == CUT:
                assert request.transport is not None
                request.transport.close()
                return response
            await response.write(piece)
        await response.write_eof()
        return response


Open = Callable[[], Awaitable[tuple[Upstream, UpstreamStream]]]


@pytest.fixture
async def open_stream(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> AsyncIterator[Open]:
    """Open an UpstreamStream on a fresh in-process upstream, read as Sluice reads (16 KiB buffer)."""
    upstream = Upstream()
    app = web.Application()
    app.router.add_get("/", upstream.handle)
    server = await aiohttp_server(app)
    opened: list[UpstreamStream] = []
    async with aiohttp.ClientSession(read_bufsize=READ_BUFFER_BYTES) as session:

        async def open_() -> tuple[Upstream, UpstreamStream]:
            response = await session.get(server.make_url("/"))
            stream = UpstreamStream(response, "test")
            opened.append(stream)
            return upstream, stream

        yield open_
        for stream in opened:
            stream.close()


class Consumer:
    """Records every batch pushed to it; `full_at_once` stops the push after each, `take_all` never does."""

    def __init__(self) -> None:
        self.batches: list[list[Chunk]] = []

    def full_at_once(self, batch: list[Chunk]) -> bool:
        self.batches.append(batch)
        return False

    def take_all(self, batch: list[Chunk]) -> bool:
        self.batches.append(batch)
        return True


def _texts(batches: list[list[Chunk]]) -> list[str | None]:
    return [chunk.content for batch in batches for chunk in batch if chunk.content]


async def test_events_after_the_first_are_handed_over_from_the_data_callback_not_a_task(open_stream: Open) -> None:
    upstream, stream = await open_stream()
    tasks: list[asyncio.Task[object] | None] = []
    arrived = asyncio.Event()

    def on_batch(batch: list[Chunk]) -> bool:
        tasks.append(asyncio.current_task())
        arrived.set()
        return True

    pushed = stream.push(on_batch)
    upstream.pieces.put_nowait(_token(1))
    async with asyncio.timeout(SECONDS):
        await arrived.wait()

    assert tasks == [None]
    assert not pushed.done()


async def test_a_read_of_many_events_is_handed_over_in_one_batch_not_one_per_http_chunk(open_stream: Open) -> None:
    """A burst's read holds one HTTP chunk per event; each would otherwise be written alone."""
    upstream, stream = await open_stream()
    batches: list[list[Chunk]] = []
    arrived = asyncio.Event()
    burst = 20

    def on_batch(batch: list[Chunk]) -> bool:
        batches.append(batch)
        arrived.set()
        return True

    stream.push(on_batch)
    upstream.pieces.put_nowait(_token(0))  # the first token leaves alone, by design: let it pass first
    async with asyncio.timeout(SECONDS):
        await arrived.wait()
        arrived.clear()
        for n in range(1, burst + 1):  # the upstream writes these in one go: one read here
            upstream.pieces.put_nowait(_token(n))
        while len(_texts(batches)) < burst + 1:
            await arrived.wait()
            arrived.clear()

    assert _texts(batches) == [f"t{n}" for n in range(burst + 1)]
    assert len(batches) == 2


async def test_the_callback_runs_in_the_context_of_the_caller_of_push(open_stream: Open) -> None:
    """Logs written while pushing (a malformed chunk's) carry the request's bound fields."""
    upstream, stream = await open_stream()
    seen: list[str | None] = []
    arrived = asyncio.Event()

    def on_batch(batch: list[Chunk]) -> bool:
        seen.append(PROBE.get(None))
        arrived.set()
        return True

    PROBE.set("the request's")
    stream.push(on_batch)
    upstream.pieces.put_nowait(_token(1))
    async with asyncio.timeout(SECONDS):
        await arrived.wait()

    assert seen == ["the request's"]


async def test_a_full_consumer_stops_the_push_and_the_next_push_goes_on_in_order(open_stream: Open) -> None:
    upstream, stream = await open_stream()
    consumer = Consumer()
    batches, full_at_once, take_all = consumer.batches, consumer.full_at_once, consumer.take_all
    count = 4 * READ_BUFFER_BYTES // len(_token(1000))  # more than aiohttp buffers before it stops reading

    first = stream.push(full_at_once)
    for n in range(count):
        upstream.pieces.put_nowait(_token(n))
    upstream.pieces.put_nowait(FINISH)
    upstream.pieces.put_nowait(None)
    async with asyncio.timeout(SECONDS):
        await first
        assert len(batches) == 1
        # The upstream's socket is no longer read: the next push must resume it.
        transport = stream._response.connection.transport if stream._response.connection else None
        assert transport is not None
        assert not transport.is_reading()
        while not stream.ended:
            await stream.push(take_all)

    assert _texts(batches) == [f"t{n}" for n in range(count)]
    assert stream.finished


async def test_a_push_stopped_on_a_small_read_leaves_the_upstream_paused_and_the_next_resumes_it(
    open_stream: Open,
) -> None:
    """Only the push paused the upstream's socket (aiohttp's reader is below its mark): the next push resumes it."""
    upstream, stream = await open_stream()
    consumer = Consumer()
    batches, full_at_once, take_all = consumer.batches, consumer.full_at_once, consumer.take_all
    first = stream.push(full_at_once)
    upstream.pieces.put_nowait(_token(0))
    async with asyncio.timeout(SECONDS):
        await first
        transport = stream._response.connection.transport if stream._response.connection else None
        assert transport is not None
        assert not transport.is_reading()
        assert not stream._response.connection.protocol._reading_paused  # type: ignore[union-attr]
        for n in range(1, 4):
            upstream.pieces.put_nowait(_token(n))
        upstream.pieces.put_nowait(FINISH)
        upstream.pieces.put_nowait(None)
        while not stream.ended:
            await stream.push(take_all)

    assert _texts(batches) == [f"t{n}" for n in range(4)]


async def test_a_body_cut_mid_stream_fails_the_push_with_the_readers_error(open_stream: Open) -> None:
    upstream, stream = await open_stream()
    pushed = stream.push(lambda batch: True)
    upstream.pieces.put_nowait(_token(1))
    upstream.pieces.put_nowait(CUT)

    with pytest.raises(aiohttp.ClientPayloadError):
        async with asyncio.timeout(SECONDS):
            await pushed


async def test_what_the_consumer_raises_fails_the_push(open_stream: Open) -> None:
    upstream, stream = await open_stream()

    def broken(batch: list[Chunk]) -> bool:
        raise ConnectionResetError("the client left")

    pushed = stream.push(broken)
    upstream.pieces.put_nowait(_token(1))

    with pytest.raises(ConnectionResetError):
        async with asyncio.timeout(SECONDS):
            await pushed
