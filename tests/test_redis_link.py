"""The link to a real redis-server: connections Redis ended while they sat idle are made again.

A restart closes every connection; a middlebox may reset idle ones. The next command on such a
connection must reach the Redis that is there now, not fail: a failure counts as an outage, and
readers on this instance are then told Redis is unreachable just after it came back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import hiredis
import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection

from server.shared.link import RedisLink, call_packed, ended_by_server
from tests.conftest import make_settings
from tests.support.proxy import CuttingProxy
from tests.support.servers import RedisServer

SECONDS = 10  # a bound far from any real wait here
PING = hiredis.pack_command(("PING",))


async def _ended(connection: AbstractConnection) -> None:
    """Return once the client's loop has read the connection's end: Redis's close, or a reset."""
    reader = connection._reader  # redis-py's asyncio.StreamReader for the connection
    assert reader is not None
    async with asyncio.timeout(SECONDS):
        with contextlib.suppress(ConnectionError):
            assert await reader.read(1) == b""  # nothing else comes on an idle connection
    assert ended_by_server(connection)


@pytest.fixture
async def make_link() -> AsyncIterator[Callable[..., RedisLink]]:
    """Links to the given URLs (with any other `redis` settings), closed after the test."""
    links: list[RedisLink] = []

    def make(url: str, **settings: Any) -> RedisLink:
        link = RedisLink(make_settings(redis={"url": url, **settings}).redis)
        links.append(link)
        return link

    yield make
    for link in links:
        await link.close()


@pytest.fixture
async def dedicated(make_link: Callable[..., RedisLink], redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A dedicated client (one connection of its own) on a link to the test's redis-server."""
    client = make_link(redis_server.url).dedicated(None)
    yield client
    await client.aclose()


async def test_a_dedicated_connection_idle_across_a_restart_reaches_the_new_redis(
    dedicated: aioredis.Redis, redis_server: RedisServer
) -> None:
    """A follower's XREAD connection or the flusher's sat idle while Redis restarted.

    Catches: `call_packed` sending on the ended connection (server/shared/link.py).
    """
    assert await call_packed(dedicated, PING, SECONDS) == b"PONG"
    connection = dedicated.connection
    assert connection is not None
    redis_server.kill()
    redis_server.start()
    await _ended(connection)

    assert await call_packed(dedicated, PING, SECONDS) == b"PONG"


async def test_a_pooled_connection_idle_across_a_restart_reaches_the_new_redis(
    make_link: Callable[..., RedisLink], redis_server: RedisServer
) -> None:
    """The pool replaces an idle connection Redis closed: the renewer's ping, a reader's XRANGE.

    Catches: redis-py's maintenance notifications left at "auto", which skips that check
    (server/shared/link.py).
    """
    link = make_link(redis_server.url)
    assert await link.client.ping()
    (idle,) = link.client.connection_pool._available_connections  # what the next command is lent
    redis_server.kill()
    redis_server.start()
    await _ended(idle)

    assert await link.client.ping()


async def test_a_pooled_connection_reset_while_idle_is_replaced_before_the_next_command(
    make_link: Callable[..., RedisLink], redis_proxy: CuttingProxy
) -> None:
    """redis-py's pool replaces an idle connection Redis closed, and with this one that was reset.

    Catches: the pool's check before lending not counting a reset (server/shared/link.py,
    `_replacing_ended`).
    """
    link = make_link(redis_proxy.url)
    assert await link.client.ping()
    (idle,) = link.client.connection_pool._available_connections  # what the next command is lent
    redis_proxy.reset_all()
    await _ended(idle)

    assert await link.client.ping()


async def test_a_connection_redis_keeps_is_not_taken_for_ended(dedicated: aioredis.Redis) -> None:
    """Catches: `ended_by_server` true of a live connection (a reconnect before every command)."""
    assert await call_packed(dedicated, PING, SECONDS) == b"PONG"
    connection = dedicated.connection
    assert connection is not None

    assert not ended_by_server(connection)


async def test_a_burst_of_more_commands_than_pooled_connections_waits_for_one_on_at_most_that_many(
    make_link: Callable[..., RedisLink], redis_server: RedisServer
) -> None:
    """redis-py's default pool failed every command past its connections at once (taken for Redis down).

    Catches: the pooled client built on redis-py's non-blocking pool (server/shared/link.py).
    """
    link = make_link(redis_server.url, command_connections=2)
    key = link.prefix + ":test:burst"

    counts = await asyncio.wait_for(asyncio.gather(*(link.client.incr(key) for _ in range(50))), SECONDS)

    assert sorted(counts) == list(range(1, 51))
    clients = await link.client.client_list()
    assert len([c for c in clients if c["name"] == f"sluice-{link.instance}"]) <= 2
