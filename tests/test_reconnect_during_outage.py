"""A reconnect during a Redis outage is held, as an attached reader is, and goes on once Redis is back.

An EventSource whose connection dropped while Redis was away reconnected to an instance that does
not generate its stream and got 503 `store_unavailable`: EventSource stops at any status but 200,
so the page gave up on a stream that went on elsewhere (found by the scale-out review). Two
`run.py` instances on a real redis-server; Redis frozen (SIGSTOP) as a stalled host is.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.client import new_request_id
from tests.support.processes import Gateway, Simulator, start_gateway
from tests.support.security import KEY_ALPHA, KEY_FROM_ENV, bearer, start_keyed_gateway
from tests.support.servers import RedisServer
from tests.support.sse import Event, iter_events

# Redis's stall is seen after its command timeout (2 s); the answer starts then. Far from the
# outage's own end (redis.outage_seconds, 10 s by default, set to a minute here).
STARTED_SECONDS = 8
# One token, then a minute of nothing: what the reconnect reads once Redis is back is that token.
HELD = "held\n#sim tokens=3 gap_ms=60000"


# What an outage may last before a held reader ends, in the test of that end: far from the bound.
SHORT_OUTAGE_SECONDS = 2
ENDED_SECONDS = 20


def two_instances(
    simulator: Simulator, redis_server: RedisServer, outage_seconds: float
) -> Iterator[tuple[Gateway, Gateway]]:
    """The instance generating the stream, and one that only reads it."""
    env = {
        "SLUICE_REDIS_URL": redis_server.url,
        "SLUICE_REDIS_OUTAGE_SECONDS": str(outage_seconds),
        "SLUICE_UPSTREAM_IDLE_TIMEOUT": "120",
    }
    with start_gateway(upstream=simulator, env=env) as producer, start_gateway(upstream=simulator, env=env) as reader:
        yield producer, reader


@pytest.fixture
def instances(simulator: Simulator, redis_server: RedisServer) -> Iterator[tuple[Gateway, Gateway]]:
    yield from two_instances(simulator, redis_server, 60)


@pytest.fixture
def short_outage_instances(simulator: Simulator, redis_server: RedisServer) -> Iterator[tuple[Gateway, Gateway]]:
    yield from two_instances(simulator, redis_server, SHORT_OUTAGE_SECONDS)


async def held_stream(http: aiohttp.ClientSession, producer: Gateway) -> str:
    headers = {"X-Request-ID": new_request_id("outage-reconnect")}
    async with http.post(producer.url + "/chat/streams", json={"message": HELD}, headers=headers) as created:
        assert created.status == 201
        return str((await created.json())["id"])


async def final_event(response: aiohttp.ClientResponse) -> Event:
    """The last event of `response`, read to its end within ENDED_SECONDS."""
    last = None
    async with asyncio.timeout(ENDED_SECONDS):
        async for event in iter_events(response):
            if event.comment is None and event.data:
                last = event
    assert last is not None
    return last


async def test_a_reconnect_while_redis_is_stalled_is_held_and_goes_on_once_it_is_back(
    instances: tuple[Gateway, Gateway], redis_server: RedisServer
) -> None:
    producer, reader = instances
    assert redis_server.process is not None
    async with aiohttp.ClientSession() as http:
        stream_id = await held_stream(http, producer)
        redis_server.process.signal(signal.SIGSTOP)
        try:
            reconnect = http.get(reader.url + f"/chat/streams/{stream_id}", headers={"Last-Event-ID": f"{stream_id}:0"})
            response = await asyncio.wait_for(reconnect, STARTED_SECONDS)
        finally:
            redis_server.process.signal(signal.SIGCONT)
        async with response:
            assert response.status == 200
            async with asyncio.timeout(STARTED_SECONDS):
                async for event in iter_events(response):
                    if event.comment is None and event.data:  # past the opening retry and id
                        break
    assert (event.event, event.id) == ("token", f"{stream_id}:1")


async def test_a_reader_held_past_the_outage_ends_with_store_unavailable_never_silently(
    short_outage_instances: tuple[Gateway, Gateway], redis_server: RedisServer
) -> None:
    producer, reader = short_outage_instances
    assert redis_server.process is not None
    async with aiohttp.ClientSession() as http:
        stream_id = await held_stream(http, producer)
        redis_server.process.signal(signal.SIGSTOP)
        try:
            url = reader.url + f"/chat/streams/{stream_id}"
            async with http.get(url, headers={"Last-Event-ID": f"{stream_id}:0"}) as response:
                assert response.status == 200
                last = await final_event(response)
        finally:
            redis_server.process.signal(signal.SIGCONT)
    assert (last.event, last.json()["error"]["code"]) == ("failed", "store_unavailable")


async def test_a_reader_held_when_its_instance_drains_ends_with_the_shutdown_event(
    instances: tuple[Gateway, Gateway], redis_server: RedisServer
) -> None:
    producer, reader = instances
    assert redis_server.process is not None
    async with aiohttp.ClientSession() as http:
        stream_id = await held_stream(http, producer)
        redis_server.process.signal(signal.SIGSTOP)
        try:
            url = reader.url + f"/chat/streams/{stream_id}"
            async with http.get(url, headers={"Last-Event-ID": f"{stream_id}:0"}) as response:
                assert response.status == 200  # held: its response started
                reader.process.signal(signal.SIGTERM)
                last = await final_event(response)
        finally:
            redis_server.process.signal(signal.SIGCONT)
    assert (last.event, last.json()["error"]["code"]) == ("failed", "server_shutting_down")
    assert last.retry is not None  # the drain's retry hint


@pytest.fixture
def keyed_instances(
    simulator: Simulator, redis_server: RedisServer, tmp_path: Path
) -> Iterator[tuple[Gateway, Gateway]]:
    """Two keyed instances: with gateway keys, whose stream it is lives in Redis too."""
    env = {
        "SLUICE_REDIS_URL": redis_server.url,
        "SLUICE_REDIS_OUTAGE_SECONDS": "60",
        "SLUICE_UPSTREAM_IDLE_TIMEOUT": "120",
    }
    with (
        start_keyed_gateway(tmp_path, simulator, env=env) as producer,
        start_keyed_gateway(tmp_path, simulator, env=env) as reader,
    ):
        yield producer, reader


async def reconnect_while_stalled(
    http: aiohttp.ClientSession, redis_server: RedisServer, url: str, headers: dict[str, str]
) -> tuple[int, list[Event]]:
    """GET `url` with Redis frozen, let Redis go once the answer started; its status and data events."""
    assert redis_server.process is not None
    redis_server.process.signal(signal.SIGSTOP)
    try:
        response = await asyncio.wait_for(http.get(url, headers=headers), STARTED_SECONDS)
    finally:
        redis_server.process.signal(signal.SIGCONT)
    async with response:
        events: list[Event] = []
        async with asyncio.timeout(ENDED_SECONDS):
            async for event in iter_events(response):
                if event.comment is None and event.data:
                    events.append(event)
                    break
        return response.status, events


async def test_a_keyed_reconnect_while_redis_is_stalled_is_held_and_goes_on_for_its_key(
    keyed_instances: tuple[Gateway, Gateway], redis_server: RedisServer
) -> None:
    producer, reader = keyed_instances
    async with aiohttp.ClientSession() as http:
        body = {"message": HELD}
        async with http.post(producer.url + "/chat/streams", json=body, headers=bearer(KEY_ALPHA)) as created:
            assert created.status == 201
            stream_id = (await created.json())["id"]
        headers = {**bearer(KEY_ALPHA), "Last-Event-ID": f"{stream_id}:0"}
        status, events = await reconnect_while_stalled(
            http, redis_server, reader.url + f"/chat/streams/{stream_id}", headers
        )
    assert status == 200
    assert [(e.event, e.id) for e in events] == [("token", f"{stream_id}:1")]


async def test_a_keyed_reconnect_held_for_another_keys_stream_gets_none_of_it(
    keyed_instances: tuple[Gateway, Gateway], redis_server: RedisServer
) -> None:
    producer, reader = keyed_instances
    async with aiohttp.ClientSession() as http:
        body = {"message": HELD}
        async with http.post(producer.url + "/chat/streams", json=body, headers=bearer(KEY_ALPHA)) as created:
            stream_id = (await created.json())["id"]
        headers = {**bearer(KEY_FROM_ENV), "Last-Event-ID": f"{stream_id}:0"}
        status, events = await reconnect_while_stalled(
            http, redis_server, reader.url + f"/chat/streams/{stream_id}", headers
        )
    assert (status, events) == (200, [])  # held, then ended with nothing: as an unknown stream's
