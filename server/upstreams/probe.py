"""Probe upstreams whose breaker waits for a trial, so readiness and routing recover by themselves."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from .attempts import Upstream
from .breaker import Admission, Breakers, BreakerState
from .client import UpstreamClient

log = structlog.get_logger("sluice.probe")


class Prober:
    """When to probe: an upstream as its breaker half-opens, and none twice within `interval` seconds.

    Probing only on a fixed tick left a breaker half-open, and the process ready (`/readyz`), for up
    to a whole interval after each cooldown while the upstream was still down: readiness flapped
    every cooldown, and an alert on the breaker's gauge being open for minutes never fired. Now a
    down upstream's breaker is half-open only for a probe's round trip. `interval` still bounds how
    often one upstream is probed (a cooldown shorter than it waits for it), and no probe goes out
    within `interval` of the start. `clock` is the breakers' (wall) clock.
    """

    def __init__(self, upstream: Upstream, interval: float, clock: Callable[[], float] = time.time) -> None:
        self._upstream = upstream
        self._interval = interval
        self._clock = clock
        started = clock()
        self._probed = {client.name: started for client in upstream.pool.clients}

    async def seconds_to_next(self) -> float:
        """How long to sleep before `probe_due`: until the earliest due probe, at most `interval`."""
        now = self._clock()
        soonest = now + self._interval  # a breaker may open meanwhile: look again by then
        for name, probed in self._probed.items():
            half_opens_in = await self._upstream.breakers.half_opens_in(name)
            if half_opens_in is not None:
                soonest = min(soonest, max(probed + self._interval, now + half_opens_in))
        return max(0.0, soonest - now)

    async def run(self) -> None:
        """Probe as each probe falls due, until cancelled.

        A failure that is no upstream's answer (a bug, a breaker store refusing a command) is logged
        and looked at again an interval later: a loop that died of it would leave every breaker open,
        and the process unready, for good.
        """
        while True:
            try:
                await asyncio.sleep(await self.seconds_to_next())
                await self.probe_due()
            except Exception:
                log.exception("upstream_probe_failed")
                await asyncio.sleep(self._interval)  # a retry pace, not a synchronisation

    async def probe_due(self) -> None:
        """Probe each half-open upstream not probed within `interval` seconds."""
        breakers = self._upstream.breakers
        for client in self._upstream.pool.clients:
            now = self._clock()
            if now - self._probed[client.name] < self._interval:
                continue
            if (await breakers.half_opens_in(client.name)) != 0.0:
                continue  # closed, or not half-open yet: nothing is due
            # Counted as probed even when a request holds the trial: looked at again after an interval.
            self._probed[client.name] = now
            await _probe(client, breakers)


async def _probe(client: UpstreamClient, breakers: Breakers) -> None:
    """Probe `client` (GET /models) if its breaker is half-open and the trial is free; close or reopen it.

    A live upstream with valid credentials answers below 500 (401 and 403 count as down: the key
    is refused). A 429 says the upstream is up but limiting us, as it may for /models alone: it
    neither closes the breaker nor reopens it for another cooldown, and frees the trial for the next
    request or probe, as a 429 at a request's trial does. A probe cancelled before its answer (the
    process stopping) frees its trial too.
    """
    if await breakers.state(client.name) is not BreakerState.HALF_OPEN:
        return
    admission, since = await breakers.claim(client.name)
    if not admission:
        return
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
