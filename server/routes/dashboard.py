"""GET /dashboard (the live dashboard page) and GET /dashboard/feed (its SSE feed of snapshots).

The feed sends a `snapshot` event at once and then every second, until the client leaves or the
process drains. Each feed keeps its own window of samples (see dashboard.py), so the page needs
no state on the app and costs nothing while nobody watches.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web
from aiohttp_sse import sse_response

from ..dashboard import KeyState, Table, UpstreamState, Window, key_table, take_sample, upstream_table
from ..keys import KEYRING, LIFECYCLE, LIMITS, METRICS, SETTINGS, UPSTREAM
from .page import serve_file

TICK_SECONDS = 1.0
WINDOW_SECONDS = 10.0
RETRY_MS = 2000


async def upstreams(app: web.Application) -> Table:
    """The upstreams table: each upstream of the pool with its breaker (closed, half_open, open)."""
    upstream = app[UPSTREAM]
    states = [
        UpstreamState(
            name=client.name,
            url=client.entry.base_url,
            breaker=str(await upstream.breakers.state(client.name)),
            in_flight=client.in_flight,
            max_concurrency=client.entry.max_concurrency,
        )
        for client in upstream.pool.clients
    ]
    return upstream_table(states)


async def keys(app: web.Application) -> Table | None:
    """The gateway keys table: each key's streams, requests and tokens against its limits (None: no keys)."""
    ring = app[KEYRING]
    if not ring.enabled:
        return None
    store = app[LIMITS]
    return key_table([KeyState(key.name, key.limits, await store.usage(key.name, key.limits)) for key in ring.keys])


# The tables a snapshot carries, each built from the app (None: nothing to show). Async, because
# what they read may live in Redis (breakers, key limits).
TABLES: tuple[Callable[[web.Application], Awaitable[Table | None]], ...] = (upstreams, keys)


async def dashboard_page(request: web.Request) -> web.FileResponse:
    """The dashboard page (static: its numbers come from the feed, which takes the metrics key)."""
    return serve_file("dashboard.html", "text/html; charset=utf-8")


async def dashboard_feed(request: web.Request) -> web.StreamResponse:
    """Stream a snapshot of the gateway's metrics every second (auth.py: the metrics key, when set)."""
    app = request.app
    lifecycle = app[LIFECYCLE]
    window = Window(WINDOW_SECONDS)
    loop = asyncio.get_running_loop()
    send_timeout = app[SETTINGS].stream.send_timeout
    async with sse_response(request, sep="\n", send_timeout=send_timeout) as response:
        response.headers["Cache-Control"] = "no-cache, no-transform"
        retry: int | None = RETRY_MS
        # A viewer that stopped reading (send timeout) or reset the connection just ends the feed.
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while not lifecycle.draining:
                window.add(take_sample(app[METRICS], loop.time()))
                tables = [table for build in TABLES if (table := await build(app)) is not None]
                await response.send(orjson.dumps(window.snapshot(tables)).decode(), event="snapshot", retry=retry)
                retry = None
                await asyncio.sleep(TICK_SECONDS)
    return response
