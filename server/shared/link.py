"""The connections to Redis, and whether it answers now.

One pooled client serves every short command, on at most `redis.command_connections` connections:
a burst of more commands at once waits for one to come free (up to `COMMAND_TIMEOUT`), as redis-py's
default pool would instead fail them at once, which read as Redis being down. A blocking read holds
its connection for as long as it blocks, so those get connections of their own (`dedicated()`),
never one from the pool.
Failures do not retry inside the client: the callers know what to do meanwhile (keep events in
memory, answer 503, wait), and a health loop probes until Redis answers again.

Redis may also be there and refuse: full (`maxmemory` with `noeviction`: OOM), a replica after a
failover (READONLY), a failed save (MISCONF), too few replicas, a script running too long (BUSY).
Those replies are raised as RedisRefusedError, one of UNREACHABLE, so every caller falls back as
for a lost connection; and since PING still answers a full Redis, the health loop's probe is a
write that such a Redis refuses. Any other error reply (a wrong type, a script's own error, an ACL
that denies a command Sluice needs) is a bug or a misconfiguration, raised as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable, Iterable
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.asyncio.client import Pipeline
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.maint_notifications import MaintNotificationsConfig
from redis.utils import HIREDIS_AVAILABLE

from ..settings import RedisSettings

log = structlog.get_logger("sluice.redis")


class RedisRefusedError(ResponseError):
    """A reply by which Redis refuses a command it cannot serve now, whatever the command: see REFUSALS."""


# The codes of those replies. LOADING needs none: redis-py raises it as a connection error. Not
# NOSCRIPT (redis-py sends the script itself then), nor NOPERM: an ACL answers the same until an
# operator changes it, and one that refused only some commands would take the link down and up
# again by turns (the probe allowed, the next script denied); that is a misconfiguration to see.
REFUSALS = frozenset({"OOM", "READONLY", "MISCONF", "BUSY", "NOREPLICAS", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN"})
# Of those, the ones a demoted primary gives: its connections are made again before their next
# command, so that after a failover a name that now leads to the new primary reaches it.
_DEMOTED = frozenset({"READONLY", "MASTERDOWN"})

# What "Redis is not there" looks like to redis-py, or "cannot serve now"; anything else is a bug
# worth its traceback. (A reply cut off by a dying server can surface as InvalidResponse rather
# than a connection error.)
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, InvalidResponse, OSError, RedisRefusedError)
# Seconds between probes while Redis is down, and the most a short command may take.
PING_INTERVAL = 0.25
COMMAND_TIMEOUT = 2.0
# The longest pause between probes, reached by doubling while the probe itself fails for a bug.
PROBE_BACKOFF_MAX = 5.0
# Seconds the probe's key lives: it is written at most every PING_INTERVAL, and only while Redis is down.
PROBE_TTL = 5


def refusal(exc: ResponseError) -> RedisRefusedError | None:
    """`exc` as a RedisRefusedError when its code is one of REFUSALS (the reply's text kept), else None."""
    message = str(exc)
    # redis-py strips the code of the replies it has a class for (OOM, READONLY...) and keeps it in `status_code`.
    code = exc.status_code or message.partition(" ")[0]
    if code not in REFUSALS:
        return None
    text = message if exc.status_code is None else f"{code} {message}"
    return RedisRefusedError(text, status_code=code)


class RedisLink:
    """The shared client, the instance's id in Redis, and the up/down state everyone consults."""

    def __init__(self, settings: RedisSettings, on_change: Callable[[bool], None] | None = None) -> None:
        """`on_change(up)` hears each change of the up/down state (the metrics' `sluice_redis_up`)."""
        assert settings.url is not None
        self._on_change = on_change
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
        self._probe_key = f"{self.prefix}:probe:{self.instance}"
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
        """Record that a command found Redis unreachable or refusing; the health loop watches for its return."""
        if self._up.is_set():
            if isinstance(exc, RedisRefusedError):
                # Redis is there and says why: the operator's first clue (memory, a failover, a disk).
                log.warning("redis_down", error=type(exc).__name__, refused=exc.status_code, reply=str(exc))
            else:
                log.warning("redis_down", error=type(exc).__name__)
            self.outages += 1
            self._up.clear()
            self._down.set()
            if self._on_change is not None:
                self._on_change(False)

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
            pause = PING_INTERVAL
            while True:
                try:
                    await self.probe()
                    break
                except UNREACHABLE:
                    pause = PING_INTERVAL
                except Exception:
                    # Not an outage but a bug (or an ACL denying the probe): said, never the loop's end.
                    log.exception("redis_probe_failed")
                    pause = min(PROBE_BACKOFF_MAX, pause * 2)
                await asyncio.sleep(pause)  # a retry pace, not a synchronisation
            self._down.clear()
            self._up.set()
            if self._on_change is not None:
                self._on_change(True)
            log.info("redis_up")

    async def probe(self) -> None:
        """A write Redis takes only when it takes writes: a full, read-only or failing Redis still answers PING."""
        await self.client.set(self._probe_key, self.instance, ex=PROBE_TTL)

    def probe_in(self, pipe: Pipeline) -> None:
        """Add the probe's write to a pipeline: its execute raises RedisRefusedError if Redis refuses writes."""
        pipe.set(self._probe_key, self.instance, ex=PROBE_TTL)

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
    """`client`, whose pool's connections pack with hiredis, replace those Redis ended, tell refusals
    and let a cancellation through while they write (see each layer)."""
    pool = client.connection_pool  # no connection is made before the first command
    layers = _writing_within_timeout(_telling_refusals(pool.connection_class))
    pool.connection_class = _packing_with_hiredis(_replacing_ended(layers))
    return client


async def call_packed(client: aioredis.Redis, command: bytes, within: float) -> Any:
    """Run one command packed by the caller on a `dedicated(None)` client's connection; its raw reply.

    For the commands sent per few events (a flush, a blocking read): redis-py's command path and
    reply parsing cost more than the round trip. One deadline covers connecting, sending and the
    reply; cut short, redis-py drops the connection and the next call makes a new one.
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
    if getattr(connection, "_demoted_on", None) is reader:
        return True  # it reached a replica: see _telling_refusals
    return reader.at_eof() or reader.exception() is not None or writer.is_closing()


def _telling_refusals(base: type[AbstractConnection]) -> type[AbstractConnection]:
    """`base`, raising the replies of REFUSALS as RedisRefusedError, wherever they come from.

    Every reply is read here: a command's, each of a pipeline's (which keeps a ResponseError as
    that command's result and raises the first), a transaction's queued commands, `call_packed`'s.
    """

    class TellingRefusals(base):  # type: ignore[valid-type,misc]  # a class chosen at run time
        async def read_response(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return await super().read_response(*args, **kwargs)
            except ResponseError as exc:
                refused = refusal(exc)
                if refused is None:
                    raise
                if refused.status_code in _DEMOTED:
                    # Made again before its next command (`ended_by_server`): not now, as the rest
                    # of a pipeline's replies are still to be read on it.
                    self._demoted_on = self._reader
                raise refused from exc

    return TellingRefusals


def _writing_within_timeout(base: type[AbstractConnection]) -> type[AbstractConnection]:
    """`base`, bounding each command's write by its socket timeout with `asyncio.timeout`, not `asyncio.wait_for`.

    redis-py 8.1 sends in a task of its own under `asyncio.wait_for`, which on Python 3.11 returns
    the result when the caller is cancelled after that task finished but before wait_for resumed
    (python/cpython#86296, bpo-42130; gone in 3.12 with python/cpython#98518). A handler whose client
    left (aiohttp cancels it) then ran on, and the upstream kept generating tokens nobody read.
    `asyncio.timeout` lets that cancellation through, and spares a task per command. The rest is
    redis-py's `send_packed_command` as it is: connecting and the health check keep their own
    timeouts, and a write past the socket timeout drops the connection as redis-py's TimeoutError.
    """

    class WritingWithinTimeout(base):  # type: ignore[valid-type,misc]  # a class chosen at run time
        async def send_packed_command(self, command: bytes | str | Iterable[bytes], check_health: bool = True) -> None:
            if not self.socket_timeout:
                # redis-py writes in the caller's task then, with no wait_for to swallow anything.
                await super().send_packed_command(command, check_health)
                return
            if not self.is_connected:
                await self.connect_check_health(check_health=False)
            if check_health:
                await self.check_health()
            if isinstance(command, str):
                command = command.encode()
            chunks = [command] if isinstance(command, bytes) else command
            try:
                async with asyncio.timeout(self.socket_timeout):
                    self._writer.writelines(chunks)
                    await self._writer.drain()
            except TimeoutError:  # before OSError, of which it is one
                await self.disconnect(nowait=True)
                raise RedisTimeoutError("Timeout writing to socket") from None
            except OSError as exc:
                await self.disconnect(nowait=True)
                number, message = (exc.args[0], exc.args[1]) if len(exc.args) > 1 else ("UNKNOWN", exc)
                raise RedisConnectionError(f"Error {number} while writing to socket. {message}.") from exc
            except BaseException:
                # Cancelled mid-write: what was sent is unknown, so the connection cannot serve another command.
                await self.disconnect(nowait=True)
                raise

    return WritingWithinTimeout


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
