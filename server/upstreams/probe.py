"""Probe upstreams whose breaker waits for a trial, so readiness and routing recover by themselves."""

from __future__ import annotations

import structlog

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
