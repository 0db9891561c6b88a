"""Probes: /health (the original shape), /livez and /readyz. None of them calls the upstream."""

from __future__ import annotations

import os

from aiohttp import web

from .. import __version__
from ..keys import LIFECYCLE, SETTINGS, UPSTREAM


async def health(request: web.Request) -> web.Response:
    """Report that Sluice is up and which upstream it relays to."""
    integration = "simulated" if request.app[SETTINGS].simulated else "openai"
    return web.json_response({"status": "ok", "integration": integration, "version": __version__})


async def livez(request: web.Request) -> web.Response:
    """Answer while the process and its event loop run; the pid tells workers apart."""
    return web.json_response({"status": "ok", "pid": os.getpid()})


async def readyz(request: web.Request) -> web.Response:
    """503 while draining or while every upstream's breaker is open; 200 otherwise, with the reason."""
    if request.app[LIFECYCLE].draining:
        return web.json_response({"status": "draining"}, status=503)
    if not await request.app[UPSTREAM].ready():
        return web.json_response({"status": "upstream_down"}, status=503)
    return web.json_response({"status": "ready"})
