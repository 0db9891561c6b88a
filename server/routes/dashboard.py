"""GET /dashboard (the live dashboard page) and GET /dashboard/feed (its SSE feed of snapshots).

The feed sends a `snapshot` event at once and then every second, until the client leaves or the
process drains. Every open feed sends the same snapshots: one producer (`produce`, run by the
app's `DashboardFeeds`, see dashboard.py) samples the metrics, builds the tables and frames the
event once a tick for all of them, from the first viewer to the last, so a viewer costs one write
a tick and nobody watching costs nothing. At most `dashboard.max_feeds` are open at once: one more
gets 503 with Retry-After. A reload (SIGHUP) that sets, changes or removes the metrics key ends every
open feed at once: the browser's reconnect then needs the key in force.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial

from aiohttp import web
from aiohttp_sse import EventSourceResponse, sse_response

from ..dashboard import (
    DashboardFeeds,
    Frames,
    KeyState,
    Table,
    UpstreamState,
    Window,
    frame,
    key_table,
    take_sample,
    upstream_table,
)
from ..keys import DASHBOARD_FEEDS, KEYRING, LIFECYCLE, LIMITS, METRICS, SETTINGS, UPSTREAM
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


async def produce(app: web.Application, publish: Callable[[Frames], None]) -> None:
    """Sample, build the tables and frame a snapshot once a tick, for every open feed, until the process drains."""
    lifecycle = app[LIFECYCLE]
    window = Window(WINDOW_SECONDS)
    loop = asyncio.get_running_loop()
    while not lifecycle.draining:
        window.add(take_sample(app[METRICS], loop.time()))
        tables = [table for build in TABLES if (table := await build(app)) is not None]
        publish(frame(window.snapshot(tables), RETRY_MS))
        await asyncio.sleep(TICK_SECONDS)


async def feeds_ctx(app: web.Application) -> AsyncIterator[None]:
    """The open dashboard feeds and their one producer, stopped (if it runs) when the app closes."""
    settings = app[SETTINGS]
    feeds = DashboardFeeds(
        partial(produce, app), max_viewers=settings.dashboard.max_feeds, retry_after=settings.server.retry_after
    )
    app[DASHBOARD_FEEDS] = feeds
    yield
    await feeds.close()


class FeedResponse(EventSourceResponse):
    """aiohttp-sse's response, also writing events framed once for every viewer."""

    async def send_framed(self, event: bytes) -> None:
        """Write `event` as `send` writes one: a viewer that takes nothing for the send timeout is cut."""
        try:
            async with asyncio.timeout(self._send_timeout):
                await self.write(event)
        except ConnectionResetError:
            self.stop_streaming()
            raise
        except TimeoutError:
            self.stop_streaming()
            self._abort_transport()  # a stalled peer never drains its buffer: a graceful close would wait on it
            raise


async def dashboard_feed(request: web.Request) -> web.StreamResponse:
    """Stream a snapshot of the gateway's metrics every second (auth.py: the metrics key, when set)."""
    app = request.app
    send_timeout = app[SETTINGS].stream.send_timeout
    ring = app[KEYRING]
    # Before the response starts: over the cap, the viewer gets a 503 with Retry-After.
    with app[DASHBOARD_FEEDS].join() as viewer:
        ring.hold_metrics(viewer)  # a reload that changes the metrics key ends the feed (Viewer.revoke)
        try:
            async with sse_response(
                request, sep="\n", send_timeout=send_timeout, response_cls=FeedResponse
            ) as response:
                response.headers["Cache-Control"] = "no-cache, no-transform"
                first = True
                # A viewer that stopped reading (send timeout) or reset the connection just ends the feed.
                with contextlib.suppress(TimeoutError, ConnectionResetError):
                    async for frames in viewer:
                        await response.send_framed(frames.first if first else frames.later)
                        first = False
        finally:
            ring.let_go_metrics(viewer)
    return response
