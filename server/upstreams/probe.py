"""Probe upstreams whose breaker waits for a trial, so readiness and routing recover by themselves."""

from __future__ import annotations

import structlog

from .attempts import Upstream
from .breaker import Admission, Breakers, BreakerState

log = structlog.get_logger("sluice.probe")


async def probe_once(upstream: Upstream) -> None:
    """Send the trial of every half-open upstream as a probe (GET /models); close or reopen its breaker.

    A live upstream with valid credentials answers below 500 (401 and 403 count as down: the key
    is refused). A 429 says the upstream is up but limiting us, as it may for /models alone: it
    neither closes the breaker nor reopens it for another cooldown, and frees the trial for the next
    request or probe, as a 429 at a request's trial does. A probe cancelled before its answer (the
    process stopping) frees its trial too.
    """
    for client in upstream.pool.clients:
        breakers = upstream.breakers
        if await breakers.state(client.name) is not BreakerState.HALF_OPEN:
            continue
        admission, since = await breakers.claim(client.name)
        if not admission:
            continue
        try:
            status = await client.probe()
        except BaseException:
            await _free_trial(breakers, admission, client.name, since)
            raise
        if status == 429:
            await _free_trial(breakers, admission, client.name, since)
        elif status is not None and status < 500 and status not in (401, 403):
            log.info("upstream_recovered", upstream=client.name)
            await breakers.succeeded(client.name)
        else:
            await breakers.failed(client.name)


async def _free_trial(breakers: Breakers, admission: Admission, name: str, since: float) -> None:
    """End the probe's trial without judging the upstream, so the next request or probe may take it."""
    if admission is Admission.TRIAL:
        await breakers.end_trials([(name, since)])
