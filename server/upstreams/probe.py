"""Probe upstreams whose breaker waits for a trial, so readiness and routing recover by themselves."""

from __future__ import annotations

import structlog

from .attempts import Upstream
from .breaker import Admission, BreakerState

log = structlog.get_logger("sluice.probe")


async def probe_once(upstream: Upstream) -> None:
    """Send the trial of every half-open upstream as a probe (GET /models); close or reopen its breaker.

    A probe cancelled before its answer (the process stopping) frees its trial, as a request does.
    """
    for client in upstream.pool.clients:
        breakers = upstream.breakers
        if await breakers.state(client.name) is not BreakerState.HALF_OPEN:
            continue
        admission, since = await breakers.claim(client.name)
        if not admission:
            continue
        try:
            alive = await client.probe()
        except BaseException:
            if admission is Admission.TRIAL:
                await breakers.end_trials([(client.name, since)])
            raise
        if alive:
            log.info("upstream_recovered", upstream=client.name)
            await breakers.succeeded(client.name)
        else:
            await breakers.failed(client.name)
