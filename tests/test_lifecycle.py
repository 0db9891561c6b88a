"""Admission in-process: the live-stream cap and a draining gateway refuse new chats with 503; departures in turns."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from aiohttp import web
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.guard import StreamGuard
from server.keys import LIFECYCLE
from server.lifecycle import Lifecycle
from tests.conftest import make_settings

Client = TestClient[web.Request, web.Application]
SECONDS = 10  # a bound far from any real wait here


async def test_chat_over_the_live_stream_cap_gets_503_with_retry_after(aiohttp_client: Any) -> None:
    client: Client = await aiohttp_client(create_app(make_settings(server={"max_live_streams": 1})))
    first = await client.post("/chat/stream", json={"message": "hold\n#sim fault=hang_first"})
    assert first.status == 200
    second = await client.post("/chat/stream", json={"message": "one more"})
    body = await second.json()
    first.close()
    assert second.status == 503
    assert second.headers["Retry-After"] == "5"
    assert body["error"]["code"] == "overloaded"


async def test_a_finished_stream_frees_its_place_under_the_cap(aiohttp_client: Any) -> None:
    client: Client = await aiohttp_client(create_app(make_settings(server={"max_live_streams": 1})))
    for _ in range(3):
        response = await client.post("/chat/stream", json={"message": "short\n#sim tokens=2"})
        assert response.status == 200
        await response.read()


async def test_draining_gateway_refuses_new_chats_on_every_route(client: Client) -> None:
    client.app[LIFECYCLE].draining = True
    bodies: dict[str, dict[str, Any]] = {
        "/chat": {"message": "hi"},
        "/chat/stream": {"message": "hi"},
        "/v1/chat/completions": {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
    }
    for path, body in bodies.items():
        response = await client.post(path, json=body)
        assert response.status == 503, path
        assert (await response.json())["error"]["code"] == "server_shutting_down"
    ready = await client.get("/readyz")
    assert ready.status == 503


async def test_drain_ends_a_live_stream_with_the_shutdown_event(client: Client) -> None:
    response = await client.post("/chat/stream", json={"message": "long\n#sim tokens=100000 gap_ms=50"})
    assert response.status == 200
    await response.content.readuntil(b"event: token")
    await client.app[LIFECYCLE].drain(0)
    rest = (await response.read()).decode()
    assert "event: failed" in rest
    assert "server_shutting_down" in rest
    assert "retry: 5000" in rest
    assert client.app[LIFECYCLE].live == 0


async def test_drain_waits_for_a_stream_that_finishes_in_time(client: Client) -> None:
    response = await client.post("/chat/stream", json={"message": "short\n#sim tokens=5 gap_ms=20"})
    drained = asyncio.create_task(client.app[LIFECYCLE].drain(30))
    text = (await response.read()).decode()
    await drained
    assert "event: done" in text


async def test_requests_whose_clients_left_are_let_through_one_a_loop_turn() -> None:
    # The loop reads its sockets between two teardowns: a callback queued as one is let through
    # runs before the next one is.
    lifecycle = Lifecycle(retry_after=5, max_live=0)
    loop = asyncio.get_running_loop()
    order: list[str] = []

    async def leave(name: str) -> None:
        await lifecycle.after_leaving()
        order.append(f"{name} torn down")
        loop.call_soon(order.append, f"turn after {name}")

    async with asyncio.timeout(SECONDS):
        await asyncio.gather(*(leave(name) for name in "abc"))
        await asyncio.sleep(0)  # the last "turn after" callback
    assert order == ["a torn down", "turn after a", "b torn down", "turn after b", "c torn down", "turn after c"]


async def test_a_cancelled_wait_for_a_turn_holds_up_no_one() -> None:
    lifecycle = Lifecycle(retry_after=5, max_live=0)
    through: list[str] = []

    async def leave(name: str) -> None:
        await lifecycle.after_leaving()
        through.append(name)

    first, cancelled, last = (asyncio.create_task(leave(name)) for name in ("first", "cancelled", "last"))
    await asyncio.sleep(0)  # all three wait for their turns
    cancelled.cancel()  # a drain ends it while it waits
    async with asyncio.timeout(SECONDS):
        await asyncio.gather(first, last)
    assert through == ["first", "last"]
    assert cancelled.cancelled()


class Reader:
    """A browser stream's reader as the drain sees it: it leaves once asked to end."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()

    def shutdown(self) -> None:
        self.asked.set()

    async def read(self, lifecycle: Lifecycle) -> None:
        with lifecycle.reading(self):
            await self.asked.wait()


class Request:
    """A live request as the drain sees it (its guard): it ends when its `done` is set."""

    def __init__(self) -> None:
        self.done = asyncio.Event()

    def shutdown(self) -> None:
        self.done.set()

    async def serve(self, lifecycle: Lifecycle) -> None:
        with lifecycle.track(cast(StreamGuard, self)):
            await self.done.wait()


async def test_the_drain_ends_readers_at_once_when_no_request_is_live() -> None:
    lifecycle = Lifecycle(retry_after=5, max_live=0)
    reader = Reader()
    reading = asyncio.create_task(reader.read(lifecycle))
    await asyncio.sleep(0)  # it reads
    assert lifecycle.readers == 1
    async with asyncio.timeout(SECONDS):  # far below the drain's 60 s
        await lifecycle.drain(60)
        await reading
    assert lifecycle.readers == 0


async def test_the_drain_ends_readers_once_its_live_requests_are_over() -> None:
    lifecycle = Lifecycle(retry_after=5, max_live=0)
    reader, request = Reader(), Request()
    tasks = [asyncio.create_task(reader.read(lifecycle)), asyncio.create_task(request.serve(lifecycle))]
    await asyncio.sleep(0)  # both started
    drained = asyncio.create_task(lifecycle.drain(60))
    await asyncio.sleep(0)  # the drain waits for the request
    assert not reader.asked.is_set()
    request.done.set()  # the request finishes in time
    async with asyncio.timeout(SECONDS):
        await drained
        await asyncio.gather(*tasks)
    assert reader.asked.is_set()


async def test_readers_are_ended_at_the_drain_timeout_with_the_live_requests() -> None:
    lifecycle = Lifecycle(retry_after=5, max_live=0)
    reader, request = Reader(), Request()
    tasks = [asyncio.create_task(reader.read(lifecycle)), asyncio.create_task(request.serve(lifecycle))]
    await asyncio.sleep(0)
    async with asyncio.timeout(SECONDS):
        await lifecycle.drain(0)  # the request outlives the drain: the drain ends it, then the reader
        await asyncio.gather(*tasks)
    assert reader.asked.is_set()


async def test_a_reader_that_arrives_after_the_drain_ended_the_others_is_ended_at_once() -> None:
    lifecycle = Lifecycle(retry_after=5, max_live=0)
    async with asyncio.timeout(SECONDS):
        await lifecycle.drain(0)
        await Reader().read(lifecycle)  # returns only once asked to end
    assert lifecycle.readers == 0
