"""Probes: /health (the original shape), /livez and /readyz. None of them calls the upstream."""

from __future__ import annotations

import asyncio
import os

from aiohttp import web

from .. import __version__
from ..connections import open_connections
from ..keys import CONNECTION_LIMIT, LIFECYCLE, REDIS, SETTINGS, UPSTREAM, UPSTREAM_CREDENTIALS
from ..upstreams.attempts import Upstream
from ..upstreams.breaker import BreakerState

# Seconds /readyz waits for the breakers' shared records (Redis) before it answers from the ones
# this process last read: far below a probe's timeout (1 s by default in Kubernetes), so a Redis
# that hangs (paused, failing over) cannot make every replica miss its probe at once.
BREAKER_READ_SECONDS = 0.25


async def health(request: web.Request) -> web.Response:
    """Report that Sluice is up and which upstream it relays to."""
    integration = "simulated" if request.app[SETTINGS].simulated else "openai"
    return web.json_response({"status": "ok", "integration": integration, "version": __version__})


async def livez(request: web.Request) -> web.Response:
    """Answer while the process and its event loop run; the pid tells workers apart."""
    return web.json_response({"status": "ok", "pid": os.getpid()})


async def readyz(request: web.Request) -> web.Response:
    """503 while draining, saturated or while every upstream's breaker is open; 200 otherwise, with the reason.

    A key the upstream rejects is named in the detail but leaves the process ready: every process
    shares the key, and a fix on the upstream's side must reach one that is still in rotation.
    With Redis down (`redis_down`) or too slow to wait for (`redis_slow`, breakers judged by the
    records last read) the process stays ready too: every replica shares that Redis.
    """
    detail = request.app[UPSTREAM_CREDENTIALS].detail()
    if request.app[LIFECYCLE].draining:
        return web.json_response({"status": "draining", **detail}, status=503)
    upstream = request.app[UPSTREAM]
    ready = await _upstream_ready(upstream)
    if not (_known_ready(upstream) if ready is None else ready):
        return web.json_response({"status": "upstream_down", **detail}, status=503)
    if _saturated(request):
        return web.json_response({"status": "saturated", **detail}, status=503)
    if ready is None:
        # Redis answers too slowly to wait for: ready as with Redis down, for the same reason.
        return web.json_response({"status": "redis_slow", **detail})
    link = request.app.get(REDIS)
    if link is not None and not link.up:
        # Still ready: /v1 and attached streams need no Redis, and every replica shares this
        # Redis, so failing readiness would take them all out of the load balancer at once.
        return web.json_response({"status": "redis_down", **detail})
    return web.json_response({"status": "ready", **detail})


async def _upstream_ready(upstream: Upstream) -> bool | None:
    """`Upstream.ready()`, or None when the breakers' store did not answer within `BREAKER_READ_SECONDS`."""
    try:
        async with asyncio.timeout(BREAKER_READ_SECONDS):
            return await upstream.ready()
    except TimeoutError:
        return None


def _known_ready(upstream: Upstream) -> bool:
    """What `Upstream.ready()` says of the breaker records this process last read or wrote."""
    breakers = upstream.breakers
    return any(breakers.known(client.name) is not BreakerState.OPEN for client in upstream.pool.clients)


def _saturated(request: web.Request) -> bool:
    """Above the high watermark of connections or live chat requests: a balancer should send elsewhere."""
    settings = request.app[SETTINGS]
    ratio = settings.connections.saturation_ratio
    if open_connections(request) > ratio * request.app[CONNECTION_LIMIT]:
        return True
    max_live = settings.server.max_live_streams
    return bool(max_live) and request.app[LIFECYCLE].live >= ratio * max_live
