"""Circuit breakers: skip an upstream that keeps failing, then let one trial request test it.

    closed ──(breaker_failures in a row, or a 429/503 with Retry-After)──▶ open
    open ──(open time passed)──▶ half-open: the next request (or the probe) is the one trial
    half-open ──trial succeeds──▶ closed;  ──trial fails──▶ open again

Open time: max(Retry-After, cooldown) after consecutive failures; a 429/503 with Retry-After (and
a 429 without it, for 1.5 s) opens it for that time alone, so one rate-limit answer does not shut
an upstream for the whole cooldown. State lives behind `BreakerStore`, so several processes can
share it (Redis); the in-memory store is the default.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Protocol

from .backoff import RATE_LIMIT_SPACING

# A half-open trial that has not reported back within this many seconds is presumed lost.
TRIAL_LEASE_SECONDS = 60.0
# Event loops round timers (uvloop to the millisecond): a request that slept exactly until the
# breaker's open time may wake a little before it by the clock, and must still get its trial.
TIMER_SLACK_SECONDS = 0.01


class BreakerState(StrEnum):
    """Where an upstream's breaker stands; the gauge reports 0, 1, 2 in this order."""

    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


@dataclass(frozen=True, slots=True)
class BreakerRecord:
    """One upstream's breaker: failures in a row, open until (0 = closed), trial in flight since."""

    failures: int = 0
    open_until: float = 0.0
    trial_since: float | None = None


class BreakerStore(Protocol):
    """Where breaker records live; `update` applies `change` atomically and returns the new record."""

    async def read(self, name: str) -> BreakerRecord: ...

    async def update(self, name: str, change: Callable[[BreakerRecord], BreakerRecord]) -> BreakerRecord: ...


class MemoryBreakerStore:
    """Breaker records of this process."""

    def __init__(self) -> None:
        self._records: dict[str, BreakerRecord] = {}

    async def read(self, name: str) -> BreakerRecord:
        return self._records.get(name, BreakerRecord())

    async def update(self, name: str, change: Callable[[BreakerRecord], BreakerRecord]) -> BreakerRecord:
        record = self._records[name] = change(self._records.get(name, BreakerRecord()))
        return record


def state_of(record: BreakerRecord, now: float) -> BreakerState:
    """The state `record` is in at `now`."""
    if record.open_until == 0.0:
        return BreakerState.CLOSED
    if now < record.open_until or _trial_running(record, now):
        return BreakerState.OPEN
    return BreakerState.HALF_OPEN


def _trial_running(record: BreakerRecord, now: float) -> bool:
    return record.trial_since is not None and now - record.trial_since < TRIAL_LEASE_SECONDS


class Breakers:
    """The breaker logic over a store; `clock` is injectable for tests."""

    def __init__(
        self,
        store: BreakerStore,
        *,
        failures: int,
        cooldown: float,
        on_rate_limit: bool = True,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[str, BreakerState], None] | None = None,
    ) -> None:
        self._store = store
        self._threshold = failures
        self._cooldown = cooldown
        self._clock = clock
        self._on_rate_limit = on_rate_limit
        self._on_change = on_change

    async def state(self, name: str) -> BreakerState:
        """The upstream's state now."""
        return state_of(await self._store.read(name), self._clock())

    async def reopens_in(self, name: str) -> float:
        """Seconds until an open breaker lets a trial through (0 when it would now)."""
        record = await self._store.read(name)
        return max(0.0, record.open_until - self._clock())

    async def acquire(self, name: str) -> bool:
        """May a request try `name` now? In half-open state only the first caller may: the trial."""
        now = self._clock() + TIMER_SLACK_SECONDS
        allowed = False

        def claim(record: BreakerRecord) -> BreakerRecord:
            nonlocal allowed
            state = state_of(record, now)
            allowed = state is not BreakerState.OPEN
            if state is BreakerState.HALF_OPEN:
                return replace(record, trial_since=now)
            return record

        await self._store.update(name, claim)
        return allowed

    async def succeeded(self, name: str) -> None:
        """The upstream answered: close its breaker."""
        before = await self._store.read(name)
        if before != BreakerRecord():
            await self._store.update(name, lambda record: BreakerRecord())
            if before.open_until:
                self._changed(name, BreakerState.CLOSED)

    async def failed(self, name: str, *, retry_after: float | None = None, rate_limited: bool = False) -> None:
        """The upstream failed; open its breaker when the rules above say so."""
        now = self._clock()

        def count(record: BreakerRecord) -> BreakerRecord:
            failures = record.failures + 1
            if record.trial_since is not None or failures >= self._threshold:
                return BreakerRecord(failures, now + max(self._cooldown, retry_after or 0.0))
            hold = max(retry_after or 0.0, RATE_LIMIT_SPACING) if rate_limited else retry_after
            if hold is not None and self._on_rate_limit:
                return BreakerRecord(failures, max(record.open_until, now + hold))
            return replace(record, failures=failures)

        before = state_of(await self._store.read(name), now)
        record = await self._store.update(name, count)
        after = state_of(record, now)
        if after is not before:
            self._changed(name, after)

    async def release(self, name: str) -> None:
        """A request that held the trial ended without a verdict (the client left): free the trial."""
        await self._store.update(name, lambda record: replace(record, trial_since=None))

    def _changed(self, name: str, state: BreakerState) -> None:
        if self._on_change is not None:
            self._on_change(name, state)
