"""The connections to Redis, and whether it answers now.

One pooled client serves every short command, on at most `redis.command_connections` connections:
a burst of more commands at once waits for one to come free (up to `COMMAND_TIMEOUT`), as redis-py's
default pool would instead fail them at once, which read as Redis being down. A blocking read holds
its connection for as long as it blocks, so those get connections of their own (`dedicated()`),
never one from the pool.
Failures do not retry inside the client: the callers know what to do meanwhile (keep events in
memory, answer 503, wait), and a health loop pings until Redis answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.maint_notifications import MaintNotificationsConfig
from redis.utils import HIREDIS_AVAILABLE

from ..settings import RedisSettings

log = structlog.get_logger("sluice.redis")

# What "Redis is not there" looks like to redis-py; anything else is a bug worth its traceback.
# (A reply cut off by a dying server can surface as InvalidResponse rather than a connection error.)
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, InvalidResponse, OSError)
# Seconds between pings while Redis is down, and the most a short command may take.
PING_INTERVAL = 0.25
COMMAND_TIMEOUT = 2.0


class RedisLink:
    """The shared client, the instance's id in Redis, and the up/down state everyone consults."""

    def __init__(self, settings: RedisSettings) -> None:
        assert settings.url is not None
        self.settings = settings
        self.prefix = settings.key_prefix
        # Names this process in leases; random, so a restarted instance is a new producer.
        self.instance = secrets.token_hex(8)
        self._url = settings.url.get_secret_value()
        self.client = self._pooled_client()
        self._up = asyncio.Event()
        self._up.set()  # assumed until a command fails: starting never waits for Redis
        self._down = asyncio.Event()
        self._health: asyncio.Task[None] | None = None
        # Times Redis was found unreachable: whoever keeps copies there rewrites them after each.
        self.outages = 0

    @property
    def up(self) -> bool:
        """False from a failed command until a ping succeeds again."""
        return self._up.is_set()

    def dedicated(self, read_timeout: float | None) -> aioredis.Redis:
        """A client with one connection of its own, for blocking reads and subscriptions."""
        options = self._connection_options(socket_timeout=read_timeout)
        return _with_our_connections(aioredis.Redis.from_url(self._url, single_connection_client=True, **options))

    def failed(self, exc: BaseException) -> None:
        """Record that a command found Redis unreachable; the health loop watches for its return."""
        if self._up.is_set():
            log.warning("redis_down", error=type(exc).__name__)
            self.outages += 1
            self._up.clear()
            self._down.set()

    async def wait_up(self, within: float) -> bool:
        """Return True once Redis answers again, False after `within` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._up.wait()
        return self._up.is_set()

    def start(self) -> None:
        self._health = asyncio.create_task(self._watch(), name="sluice-redis-health")

    async def close(self) -> None:
        if self._health is not None:
            self._health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health
        await self.client.aclose()

    async def _watch(self) -> None:
        while True:
            await self._down.wait()
            while True:
                try:
                    await self.client.ping()
                    break
                except UNREACHABLE:
                    await asyncio.sleep(PING_INTERVAL)  # a retry pace, not a synchronisation
            self._down.clear()
            self._up.set()
            log.info("redis_up")

    def _pooled_client(self) -> aioredis.Redis:
        pool = aioredis.BlockingConnectionPool.from_url(
            self._url, max_connections=self.settings.command_connections, **self._connection_options()
        )
        pool.timeout = COMMAND_TIMEOUT  # a wait for a connection past that is unreachable, as a command past it
        return _with_our_connections(aioredis.Redis.from_pool(pool))  # the client closes its pool

    def _connection_options(self, **options: Any) -> dict[str, Any]:
        defaults: dict[str, Any] = {
            "socket_timeout": COMMAND_TIMEOUT,
            "socket_connect_timeout": COMMAND_TIMEOUT,
            "retry": Retry(NoBackoff(), 0),
            "client_name": f"sluice-{self.instance}",
            # Redis Enterprise's maintenance events, unused here. Left at redis-py's "auto" (RESP3),
            # they cost a round trip per new connection, and redis-py 8.1 then skips its pool's check
            # of idle connections (redis/redis-py#4252): after a restart each one failed a command.
            "maint_notifications_config": MaintNotificationsConfig(enabled=False),
        }
        return {**defaults, **options}


def _with_our_connections(client: aioredis.Redis) -> aioredis.Redis:
    """`client`, whose pool makes its connections pack with hiredis and replace those Redis ended."""
    pool = client.connection_pool  # no connection is made before the first command
    pool.connection_class = _packing_with_hiredis(_replacing_ended(pool.connection_class))
    return client


async def call_packed(client: aioredis.Redis, command: bytes, within: float) -> Any:
    """Run one command packed by the caller on a `dedicated(None)` client's connection; its raw reply.

    For the commands sent per few events (a flush, a blocking read): redis-py's command path and
    reply parsing cost more than the round trip, and with a socket timeout it sends each command
    in a task of its own (`asyncio.wait_for`). One deadline covers connecting, sending and the
    reply instead; cut short, redis-py drops the connection and the next call makes a new one.
    A reply that is an error is raised; past `within` seconds, the builtin TimeoutError (an OSError).
    """
    async with asyncio.timeout(within):
        if client.connection is None:
            await client.initialize()
        connection = client.connection
        assert connection is not None
        if ended_by_server(connection):
            await connection.disconnect(nowait=True)  # sending reconnects it
        await connection.send_packed_command(command, check_health=False)
        return await connection.read_response()


def ended_by_server(connection: AbstractConnection) -> bool:
    """True when Redis closed or reset this connection while it sat idle: a restart does that to them all.

    Its next command would fail, and count as an outage just after Redis came back (readers
    elsewhere then got "unreachable"). redis-py's pool checks a connection before lending it, but
    sees only a close (FIN), not a reset; a dedicated client's connection is not checked at all.
    """
    reader, writer = connection._reader, connection._writer
    if reader is None or writer is None:
        return False  # not connected: the next command connects
    return reader.at_eof() or reader.exception() is not None or writer.is_closing()


def _replacing_ended(base: type[AbstractConnection]) -> type[AbstractConnection]:
    """`base`, whose pool replaces it when Redis reset it while idle (`ended_by_server`), as when Redis closed it."""

    class ReplacingEnded(base):  # type: ignore[valid-type,misc]  # a class chosen at run time
        async def can_read(self) -> bool:
            # The pool's check before lending: True makes it reconnect (redis-py's "Connection has data").
            return ended_by_server(self) or bool(await super().can_read())

    return ReplacingEnded


def _packing_with_hiredis(base: type[AbstractConnection]) -> type[AbstractConnection]:
    """`base` (TCP, TLS or Unix socket), packing commands with hiredis rather than in Python.

    redis-py's synchronous connections pack with hiredis when it is installed; its asyncio ones
    always in Python, which cost more per event than anything else on a reader elsewhere (an
    XREAD over a few dozen streams: about 60 µs in Python, 8 in hiredis, on a loaded machine).
    """
    if not HIREDIS_AVAILABLE:
        return base
    serializer = HiredisRespSerializer()

    class HiredisPacking(base):  # type: ignore[valid-type,misc]  # a class chosen at run time
        def pack_command(self, *args: Any) -> list[bytes]:
            packed: list[bytes] = serializer.pack(*args)
            return packed

    return HiredisPacking
