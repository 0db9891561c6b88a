"""A task cancelled while the link's pooled client sends a command to a real redis-server sees it cancelled.

aiohttp cancels a request handler whose client left. On Python 3.11, redis-py's `asyncio.wait_for`
around each write dropped a cancellation that came after the write was done but before wait_for
resumed (python/cpython#86296): the handler ran on, its upstream generating tokens nobody read.
The write must still give up after the socket timeout when Redis takes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

from server.shared.link import COMMAND_TIMEOUT, RedisLink
from tests.conftest import make_settings
from tests.support.servers import RedisServer

SECONDS = 10  # a bound far from any real wait here
# More than both ends' socket buffers together may hold (net.ipv4.tcp_rmem allows up to 32 MB, tcp_wmem
# 4 MB): its write waits for a Redis that reads nothing.
UNSENDABLE = b"x" * (64 * 1024 * 1024)
SLACK = 3.0  # seconds past the socket timeout a timed-out write may take to be raised, on a loaded machine


@pytest.fixture
async def link(redis_server: RedisServer) -> AsyncIterator[RedisLink]:
    """A link to the test's redis-server whose pooled client keeps one connection, already made."""
    link = RedisLink(make_settings(redis={"url": redis_server.url, "command_connections": 1}).redis)
    assert await link.client.ping()
    yield link
    await link.close()


@contextlib.contextmanager
def stalled(redis_server: RedisServer) -> Iterator[None]:
    """Redis frozen (SIGSTOP) for the block: it reads nothing, answers nothing."""
    assert redis_server.process is not None
    redis_server.process.signal(signal.SIGSTOP)
    try:
        yield
    finally:
        redis_server.process.signal(signal.SIGCONT)


async def test_a_command_cancelled_once_written_raises_cancelled_error_in_its_caller(link: RedisLink) -> None:
    """Catches: the pooled connections' writes under redis-py's `asyncio.wait_for` (server/shared/link.py)."""
    (connection,) = link.client.connection_pool._available_connections  # what the next command is lent
    writer = connection._writer  # redis-py's asyncio.StreamWriter for the connection
    assert writer is not None
    drain = writer.drain
    cancels: list[asyncio.Handle] = []

    async def drain_then_cancel_caller() -> None:
        await drain()
        # The command is written: the caller is cancelled at the loop's next turn, when redis-py's
        # wait_for has its write task done and has not resumed yet.
        cancels.append(asyncio.get_running_loop().call_soon(caller.cancel))

    async def lookup() -> object:  # as a handler checks a limit or a stream
        return await link.client.get(link.prefix + ":test:cancelled")

    writer.drain = drain_then_cancel_caller  # type: ignore[method-assign]
    caller = asyncio.create_task(lookup())
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(SECONDS):
            await caller
    assert len(cancels) == 1


async def test_a_pooled_command_is_written_without_wait_for(link: RedisLink, monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches the same break on any Python: past 3.11, wait_for lets the cancellation through, and
    the test above passes under redis-py's own write; the write must not go through wait_for at all."""
    wait_for = asyncio.wait_for
    awaited: list[str] = []

    def recording(awaitable: Any, timeout: float | None) -> Any:
        awaitable_code = getattr(awaitable, "cr_code", None)
        awaited.append(awaitable_code.co_name if awaitable_code is not None else repr(awaitable))
        return wait_for(awaitable, timeout)

    monkeypatch.setattr(asyncio, "wait_for", recording)  # redis-py calls it as `asyncio.wait_for`
    async with asyncio.timeout(SECONDS):
        assert await link.client.set(link.prefix + ":test:written", b"1")
    assert "_send_packed_command" not in awaited


async def test_a_command_redis_does_not_read_times_out_writing_after_the_socket_timeout(
    link: RedisLink, redis_server: RedisServer
) -> None:
    """Catches: the write left without a deadline (server/shared/link.py)."""
    loop = asyncio.get_running_loop()
    (connection,) = link.client.connection_pool._available_connections  # what the next command is lent
    writer = connection._writer
    assert writer is not None
    with stalled(redis_server):
        started = loop.time()
        with pytest.raises(RedisTimeoutError, match="writing"):
            async with asyncio.timeout(SECONDS):
                await link.client.set(link.prefix + ":test:unsendable", UNSENDABLE)
        waited = loop.time() - started
    # The loop's timers may fire up to its clock resolution early; far below 0.1 s.
    assert COMMAND_TIMEOUT - 0.1 <= waited < COMMAND_TIMEOUT + SLACK
    # redis-py closed the connection but its transport keeps what was unsent until Redis reads it.
    async with asyncio.timeout(SECONDS):
        await writer.wait_closed()
