"""Probes: /health (the original shape), /livez and /readyz. None of them calls the upstream."""

from __future__ import annotations

import os

from aiohttp import web

from .. import __version__
from ..connections import open_connections
from ..keys import CONNECTION_LIMIT, LIFECYCLE, REDIS, SETTINGS, UPSTREAM, UPSTREAM_CREDENTIALS


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
    """
    detail = request.app[UPSTREAM_CREDENTIALS].detail()
    if request.app[LIFECYCLE].draining:
        return web.json_response({"status": "draining", **detail}, status=503)
    if not await request.app[UPSTREAM].ready():
        return web.json_response({"status": "upstream_down", **detail}, status=503)
    if _saturated(request):
        return web.json_response({"status": "saturated", **detail}, status=503)
    link = request.app.get(REDIS)
    if link is not None and not link.up:
        # Still ready: /v1 and attached streams need no Redis, and every replica shares this
        # Redis, so failing readiness would take them all out of the load balancer at once.
        return web.json_response({"status": "redis_down", **detail})
    return web.json_response({"status": "ready", **detail})


def _saturated(request: web.Request) -> bool:
    """Above the high watermark of connections or live chat requests: a balancer should send elsewhere."""
    settings = request.app[SETTINGS]
    ratio = settings.connections.saturation_ratio
    if open_connections(request) > ratio * request.app[CONNECTION_LIMIT]:
        return True
    max_live = settings.server.max_live_streams
    return bool(max_live) and request.app[LIFECYCLE].live >= ratio * max_live
