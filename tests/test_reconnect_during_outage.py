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
from typing import Any

import aiohttp
import pytest

from tests.support.client import new_request_id
from tests.support.processes import Gateway, Simulator, start_gateway
from tests.support.security import KEY_ALPHA, KEY_FROM_ENV, bearer, start_keyed_gateway
from tests.support.servers import RedisServer
from tests.support.sse import Event, iter_events
from tests.test_redis_limits import stalled

# Redis's stall is seen after its command timeout (2 s); the answer starts then. Far from the
# outage's own end (redis.outage_seconds, 10 s by default, set to a minute here).
STARTED_SECONDS = 8
# One token, then a minute of nothing: what the reconnect reads once Redis is back is that token.
HELD = "held\n#sim tokens=3 gap_ms=60000"
# What an outage may last before a held reader ends, in the test of that end: far from the bound.
SHORT_OUTAGE_SECONDS = 2
ENDED_SECONDS = 20

Instances = tuple[Gateway, Gateway]  # the instance generating the stream, and one that only reads it


def outage_env(redis_server: RedisServer, outage_seconds: float) -> dict[str, str]:
    return {
        "SLUICE_REDIS_URL": redis_server.url,
        "SLUICE_REDIS_OUTAGE_SECONDS": str(outage_seconds),
        "SLUICE_UPSTREAM_IDLE_TIMEOUT": "120",
    }


def two_instances(simulator: Simulator, redis_server: RedisServer, outage_seconds: float) -> Iterator[Instances]:
    env = outage_env(redis_server, outage_seconds)
    with start_gateway(upstream=simulator, env=env) as producer, start_gateway(upstream=simulator, env=env) as reader:
        yield producer, reader


@pytest.fixture
def instances(simulator: Simulator, redis_server: RedisServer) -> Iterator[Instances]:
    yield from two_instances(simulator, redis_server, 60)


@pytest.fixture
def short_outage_instances(simulator: Simulator, redis_server: RedisServer) -> Iterator[Instances]:
    yield from two_instances(simulator, redis_server, SHORT_OUTAGE_SECONDS)


@pytest.fixture
def keyed_instances(simulator: Simulator, redis_server: RedisServer, tmp_path: Path) -> Iterator[Instances]:
    """Two keyed instances: with gateway keys, whose stream it is lives in Redis too."""
    env = outage_env(redis_server, 60)
    with (
        start_keyed_gateway(tmp_path, simulator, env=env) as producer,
        start_keyed_gateway(tmp_path, simulator, env=env) as reader,
    ):
        yield producer, reader


async def held_stream(http: aiohttp.ClientSession, producer: Gateway, headers: dict[str, str] | None = None) -> str:
    """A browser stream started on `producer` that sends one token, then waits a minute; its id."""
    headers = {"X-Request-ID": new_request_id("outage-reconnect"), **(headers or {})}
    async with http.post(producer.url + "/chat/streams", json={"message": HELD}, headers=headers) as created:
        assert created.status == 201
        return str((await created.json())["id"])


def resume(http: aiohttp.ClientSession, reader: Gateway, stream_id: str, headers: dict[str, str] | None = None) -> Any:
    """GET the stream on `reader` after its event 0, as an EventSource's reconnect does."""
    headers = {"Last-Event-ID": f"{stream_id}:0", **(headers or {})}
    return http.get(reader.url + f"/chat/streams/{stream_id}", headers=headers)


async def data_events(response: aiohttp.ClientResponse, *, first_only: bool) -> list[Event]:
    """The events with data of `response` (past the opening retry and id), to its end within ENDED_SECONDS."""
    events: list[Event] = []
    async with asyncio.timeout(ENDED_SECONDS):
        async for event in iter_events(response):
            if event.comment is None and event.data:
                events.append(event)
                if first_only:
                    break
    return events


async def reconnect_while_stalled(
    http: aiohttp.ClientSession, redis_server: RedisServer, reader: Gateway, stream_id: str, headers: dict[str, str]
) -> tuple[int, list[Event]]:
    """Reconnect with Redis frozen, let Redis go once the answer started; its status and first data event."""
    with stalled(redis_server):
        response = await asyncio.wait_for(resume(http, reader, stream_id, headers), STARTED_SECONDS)
    async with response:
        return response.status, await data_events(response, first_only=True)


async def test_a_reconnect_while_redis_is_stalled_is_held_and_goes_on_once_it_is_back(
    instances: Instances, redis_server: RedisServer
) -> None:
    producer, reader = instances
    async with aiohttp.ClientSession() as http:
        stream_id = await held_stream(http, producer)
        status, events = await reconnect_while_stalled(http, redis_server, reader, stream_id, {})
    assert status == 200
    assert [(e.event, e.id) for e in events] == [("token", f"{stream_id}:1")]


async def test_a_reader_held_past_the_outage_ends_with_store_unavailable_never_silently(
    short_outage_instances: Instances, redis_server: RedisServer
) -> None:
    producer, reader = short_outage_instances
    async with aiohttp.ClientSession() as http:
        stream_id = await held_stream(http, producer)
        with stalled(redis_server):
            async with resume(http, reader, stream_id) as response:
                assert response.status == 200
                last = (await data_events(response, first_only=False))[-1]
    assert (last.event, last.json()["error"]["code"]) == ("failed", "store_unavailable")


async def test_a_reader_held_when_its_instance_drains_ends_with_the_shutdown_event(
    instances: Instances, redis_server: RedisServer
) -> None:
    producer, reader = instances
    async with aiohttp.ClientSession() as http:
        stream_id = await held_stream(http, producer)
        with stalled(redis_server):
            async with resume(http, reader, stream_id) as response:
                assert response.status == 200  # held: its response started
                reader.process.signal(signal.SIGTERM)
                last = (await data_events(response, first_only=False))[-1]
    assert (last.event, last.json()["error"]["code"]) == ("failed", "server_shutting_down")
    assert last.retry is not None  # the drain's retry hint


async def test_a_keyed_reconnect_while_redis_is_stalled_is_held_and_goes_on_for_its_key(
    keyed_instances: Instances, redis_server: RedisServer
) -> None:
    producer, reader = keyed_instances
    async with aiohttp.ClientSession() as http:
        stream_id = await held_stream(http, producer, bearer(KEY_ALPHA))
        status, events = await reconnect_while_stalled(http, redis_server, reader, stream_id, bearer(KEY_ALPHA))
    assert status == 200
    assert [(e.event, e.id) for e in events] == [("token", f"{stream_id}:1")]


async def test_a_keyed_reconnect_held_for_another_keys_stream_gets_none_of_it(
    keyed_instances: Instances, redis_server: RedisServer
) -> None:
    producer, reader = keyed_instances
    async with aiohttp.ClientSession() as http:
        stream_id = await held_stream(http, producer, bearer(KEY_ALPHA))
        status, events = await reconnect_while_stalled(http, redis_server, reader, stream_id, bearer(KEY_FROM_ENV))
    assert (status, events) == (200, [])  # held, then ended with nothing: as an unknown stream's
