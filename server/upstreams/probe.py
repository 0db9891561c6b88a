"""Probe upstreams whose breaker waits for a trial, so readiness and routing recover by themselves."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from ..keys import SETTINGS, UPSTREAM
from .attempts import Upstream
from .breaker import BreakerState

log = structlog.get_logger("sluice.probe")


async def probe_once(upstream: Upstream) -> None:
    """Send the trial of every half-open upstream as a probe (GET /models); close or reopen its breaker."""
    for client in upstream.pool.clients:
        breakers = upstream.breakers
        if await breakers.state(client.name) is not BreakerState.HALF_OPEN:
            continue
        if not await breakers.acquire(client.name):
            continue
        if await client.probe():
            log.info("upstream_recovered", upstream=client.name)
            await breakers.succeeded(client.name)
        else:
            await breakers.failed(client.name)


async def probe_ctx(app: web.Application) -> AsyncIterator[None]:
    """Run `probe_once` every `upstream.probe_interval` seconds while the application runs."""
    interval = app[SETTINGS].upstream.probe_interval

    async def loop() -> None:
        while True:
            await asyncio.sleep(interval)
            await probe_once(app[UPSTREAM])

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
