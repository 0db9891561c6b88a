"""Circuit breakers: skip an upstream that keeps failing, then let one trial request test it.

    closed ──(breaker_failures in a row, or a 429/503 with Retry-After)──▶ open
    open ──(open time passed)──▶ half-open: the next request (or the probe) is the one trial
    half-open ──trial succeeds──▶ closed;  ──trial fails──▶ open again
              ──trial ends without a verdict on this breaker──▶ half-open, the trial free again

Open time: max(Retry-After, cooldown) after consecutive failures; a 429/503 with Retry-After (and
a 429 without it, for 1.5 s) opens it for that time alone, so a rate-limit answer does not shut
an upstream for the whole cooldown. A 429 is not a failure: however many come in a row, each holds
the breaker for its own time and no more. A Retry-After counts for at most MAX_RETRY_AFTER_SECONDS: one
header cannot hold an upstream out of reach of its trial (and the probe) until restart. State lives
behind `BreakerStore`, so several processes can share it (Redis); the in-memory store is the default.
A shared record is read bounded by the longest this version opens a breaker for (`BoundedStore`):
one an older Sluice wrote from an uncapped Retry-After does not hold an upstream out for hours.

Every trial ends with its attempt. An attempt at (upstream, model) may hold two trials: the
upstream's breaker and the pair's rate-limit hold. A success closes both; a failure that counts
against one of them (a 429 against the pair; another failure the request did not cause, such as
a 5xx or a timeout, against the upstream) reopens that one; and every trial the outcome says
nothing about (the client's own 4xx, a 5xx at the pair's trial, a 429 at the upstream's, a
client that left, a cancelled attempt) is freed, its breaker left half-open, so the next request
may be the trial at once. `TRIAL_LEASE_SECONDS` is only the backstop for a trial whose process
died before it could say how the trial ended.

`on_change` (the breaker-state gauge) follows what this process last read, not only the
transitions it made: with a shared store another instance opens, closes or half-opens a breaker,
and each record a request, the probe or /readyz reads anyway sets the gauge to its state, so every
instance's gauge agrees with the shared one after its next read (no extra round trip for it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from enum import IntEnum, StrEnum
from typing import Protocol

from ..errors import NEVER_RETRIED_CODES, UpstreamError
from .backoff import RATE_LIMIT_SPACING, tries_next_candidate
from .failures import MAX_RETRY_AFTER_SECONDS

# A half-open trial that has not reported back within this many seconds is presumed lost (its
# process died): every live attempt reports how its trial ended (see the module's docstring).
TRIAL_LEASE_SECONDS = 60.0
# Event loops round timers (uvloop to the millisecond): a request that slept exactly until the
# breaker's open time may wake a little before it by the clock, and must still get its trial.
TIMER_SLACK_SECONDS = 0.01


class Admission(IntEnum):
    """What `acquire` decided; false only when refused."""

    REFUSED = 0
    ALLOWED = 1
    TRIAL = 2  # the one request that tests a half-open breaker


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


# A closed breaker's record (frozen: one object serves every upstream).
CLOSED_RECORD = BreakerRecord()

# A trial an attempt holds: the breaker's name and the time its trial began (its `trial_since`),
# so that freeing it never frees a later trial of the same breaker.
Trial = tuple[str, float]


class BreakerStore(Protocol):
    """Where breaker records live; `update` applies `change` atomically and returns the new record."""

    async def read(self, name: str) -> BreakerRecord: ...

    async def update(self, name: str, change: Callable[[BreakerRecord], BreakerRecord]) -> BreakerRecord: ...


class MemoryBreakerStore:
    """Breaker records of this process."""

    def __init__(self) -> None:
        # By breaker name; a name without one is closed (CLOSED_RECORD). Read directly by
        # `Breakers.closed` and `settled`, on every attempt.
        self.records: dict[str, BreakerRecord] = {}

    async def read(self, name: str) -> BreakerRecord:
        return self.records.get(name, CLOSED_RECORD)

    async def update(self, name: str, change: Callable[[BreakerRecord], BreakerRecord]) -> BreakerRecord:
        record = self.records[name] = change(self.records.get(name, CLOSED_RECORD))
        return record

    def peek(self, name: str) -> BreakerRecord:
        """The record now, without a coroutine: what `read` returns."""
        return self.records.get(name, CLOSED_RECORD)


class BoundedStore:
    """A shared store whose records this process reads as it would have written them: open at most `longest` s ahead.

    An older Sluice took a Retry-After uncapped, so a record it left in Redis can hold an upstream
    out for hours (so can one from an instance whose clock runs far ahead). Such a record is cut to
    `longest` s from the moment it is read, and written back so (one update, the first time): read
    again, it reopens when it said, where a cut made on every read would move its end with each.
    """

    def __init__(self, store: BreakerStore, longest: float, clock: Callable[[], float]) -> None:
        self._store = store
        self._longest = longest
        self._clock = clock

    def _bound(self, record: BreakerRecord) -> BreakerRecord:
        latest = self._clock() + self._longest
        return record if record.open_until <= latest else replace(record, open_until=latest)

    async def read(self, name: str) -> BreakerRecord:
        record = await self._store.read(name)
        if record.open_until - self._clock() <= self._longest:
            return record
        return await self._store.update(name, self._bound)

    async def update(self, name: str, change: Callable[[BreakerRecord], BreakerRecord]) -> BreakerRecord:
        return await self._store.update(name, lambda record: change(self._bound(record)))


def state_of(record: BreakerRecord, now: float) -> BreakerState:
    """The state `record` is in at `now`."""
    if record.open_until == 0.0:
        return BreakerState.CLOSED
    if now < record.open_until or _trial_running(record, now):
        return BreakerState.OPEN
    return BreakerState.HALF_OPEN


def _reported(record: BreakerRecord, now: float) -> BreakerState:
    """The state `on_change` reports: a breaker whose trial runs is half-open (`state_of` refuses: open)."""
    if record.open_until and record.trial_since is not None:
        return BreakerState.HALF_OPEN
    return state_of(record, now)


def _settled(record: BreakerRecord) -> bool:
    """True for a closed breaker with no failure counted: a success leaves it as it is."""
    return record is CLOSED_RECORD or record == CLOSED_RECORD


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
        # A record of this process's own opens for at most this long (`failed`); a shared one written
        # by an older Sluice may say longer, and is read bounded by it.
        longest = max(cooldown, MAX_RETRY_AFTER_SECONDS)
        self._store = store if isinstance(store, MemoryBreakerStore) else BoundedStore(store, longest, clock)
        self._threshold = failures
        self._cooldown = cooldown
        self._clock = clock
        self._on_rate_limit = on_rate_limit
        self._on_change = on_change
        # The state each upstream was last reported in (none yet: the gauge starts at closed), and
        # the record last read: what `known` answers when the store is too slow to wait for.
        self._reported: dict[str, BreakerState] = {}
        self._seen: dict[str, BreakerRecord] = {}
        # In memory, a request whose breakers are all closed is decided by two dict lookups, not
        # four coroutines per attempt (admit and answered, each over the pair and the upstream).
        self._memory = store if isinstance(store, MemoryBreakerStore) else None

    async def state(self, name: str) -> BreakerState:
        """The upstream's state now."""
        return state_of(await self._read(name), self._clock())

    def known(self, name: str) -> BreakerState:
        """The upstream's state by the record this process last read or wrote, without the store."""
        return state_of(self._seen.get(name, CLOSED_RECORD), self._clock())

    async def reopens_in(self, name: str) -> float:
        """Seconds until an open breaker lets a trial through (0 when it would now)."""
        record = await self._read(name)
        return max(0.0, record.open_until - self._clock())

    async def half_opens_in(self, name: str) -> float | None:
        """Seconds until the breaker half-opens (0: it is half-open now, or its trial runs); None while closed."""
        record = await self._read(name)
        return None if record.open_until == 0.0 else max(0.0, record.open_until - self._clock())

    async def acquire(self, name: str) -> Admission:
        """May a request try `name` now? In half-open state only the first caller may: the trial."""
        admission, _ = await self.claim(name)
        return admission

    async def claim(self, name: str) -> tuple[Admission, float]:
        """What `acquire` decides, and when a trial it grants began (for `release`)."""
        now = self._clock() + TIMER_SLACK_SECONDS
        if (await self._read(name)).open_until == 0.0:
            # Closed: the update below would change nothing, so a read decides (with Redis, one
            # round trip instead of a watched transaction, on every request).
            return Admission.ALLOWED, now
        admission = Admission.REFUSED

        def take(record: BreakerRecord) -> BreakerRecord:
            nonlocal admission
            state = state_of(record, now)
            if state is BreakerState.HALF_OPEN:
                admission = Admission.TRIAL
                return replace(record, trial_since=now)
            admission = Admission.REFUSED if state is BreakerState.OPEN else Admission.ALLOWED
            return record

        self._saw(name, await self._store.update(name, take))
        return admission, now

    async def succeeded(self, name: str) -> None:
        """The upstream answered: close its breaker."""
        if not _settled(await self._read(name)):
            self._saw(name, await self._store.update(name, lambda record: CLOSED_RECORD))

    async def failed(self, name: str, *, retry_after: float | None = None, rate_limited: bool = False) -> None:
        """The upstream failed; open its breaker when the rules above say so."""
        now = self._clock()
        if retry_after is not None:
            retry_after = min(retry_after, MAX_RETRY_AFTER_SECONDS)  # parsed ones are; any caller's too

        def count(record: BreakerRecord) -> BreakerRecord:
            if rate_limited:
                # The upstream said when: held for that alone (a trial's 429 too), however many came
                # in a row, and never counted as a failure. Counted, five 429s a few seconds apart
                # (the routing's own retries, under load) shut the model for the whole cooldown.
                if not self._on_rate_limit:
                    return record
                hold = max(retry_after or 0.0, RATE_LIMIT_SPACING)
                return BreakerRecord(record.failures, max(record.open_until, now + hold))
            failures = record.failures + 1
            if failures >= self._threshold:
                return BreakerRecord(failures, now + max(self._cooldown, retry_after or 0.0))
            if retry_after is not None and self._on_rate_limit:
                # The upstream said when (a 503 with Retry-After), a failed trial's too: held for
                # that, not the cooldown, until the failures in a row reach the threshold.
                return BreakerRecord(failures, max(record.open_until, now + retry_after))
            if record.trial_since is not None:
                # A failed trial reopens for the cooldown.
                return BreakerRecord(failures, now + self._cooldown)
            return replace(record, failures=failures)

        # A failed trial reports half-open (its gauge) then open again, from the record it wrote.
        self._saw(name, await self._store.update(name, count))

    async def release(self, name: str, since: float | None = None) -> None:
        """The trial of `name` begun at `since` (any, when None) ended without a verdict: free it.

        The breaker stays half-open, and the next request (or the probe) may be the trial at once.
        A trial begun later (by another request, once this one's lease ran out) is left alone.
        """

        def free(record: BreakerRecord) -> BreakerRecord:
            if record.trial_since is None or (since is not None and record.trial_since != since):
                return record
            return replace(record, trial_since=None)

        self._saw(name, await self._store.update(name, free))

    async def end_trials(self, trials: Collection[Trial]) -> None:
        """Free `trials`: their attempt ended with no verdict on them (the client left, it was cancelled).

        Shielded: with Redis, a second cancellation arriving meanwhile must not leave one held
        until its lease runs out.
        """
        if trials:
            await asyncio.shield(self._release_all(trials))

    async def _release_all(self, trials: Collection[Trial]) -> None:
        for name, since in trials:
            await self.release(name, since)

    # --- one attempt at (upstream, model): the upstream's breaker and the pair's rate-limit hold ---

    def closed(self, upstream: str, model: str) -> bool:
        """True when both breakers of (upstream, model) are known closed without awaiting (in memory).

        `admit` would then return `[]`: the routing skips its coroutine.
        """
        memory = self._memory
        if memory is None:
            return False
        records = memory.records
        if not records:
            return True  # no breaker ever failed: every one closed, the pair's name not even built
        # Read here, not through `peek` and `_pair`: three calls fewer on every attempt.
        return (
            records.get(upstream, CLOSED_RECORD).open_until == 0.0
            and records.get(f"{upstream}{_PAIR_SEPARATOR}{model}", CLOSED_RECORD).open_until == 0.0
        )

    def settled(self, upstream: str, model: str) -> bool:
        """True when both breakers are known closed with no failure counted (in memory): `answered` changes nothing."""
        memory = self._memory
        if memory is None:
            return False
        records = memory.records
        if not records:
            return True  # as in `closed`
        pair = records.get(f"{upstream}{_PAIR_SEPARATOR}{model}", CLOSED_RECORD)
        return _settled(records.get(upstream, CLOSED_RECORD)) and _settled(pair)

    async def admit(self, upstream: str, model: str) -> list[Trial] | None:
        """None unless both breakers let an attempt through; else the trials it holds.

        The attempt must end each of them: `answered`, `judge`, or `end_trials` when it ends
        without a verdict.
        """
        if self.closed(upstream, model):
            return []  # both closed: what `acquire` decides for each
        pair = _pair(upstream, model)
        trials: list[Trial] = []
        try:
            for key in (pair, upstream):
                admission, since = await self.claim(key)
                if admission is Admission.REFUSED:
                    await self.end_trials(trials)
                    return None
                if admission is Admission.TRIAL:
                    trials.append((key, since))
        except BaseException:
            await self.end_trials(trials)  # cancelled between the two claims (Redis)
            raise
        return trials

    async def judge(self, upstream: str, model: str, error: UpstreamError, trials: Collection[Trial] = ()) -> None:
        """Count a failure unless the request itself was at fault; end the attempt's `trials`.

        A 429 is a limit of one model at that upstream (providers limit per model): it counts
        against that pair only, so the upstream still serves other models, fallbacks included.
        The failure ends the trial of the breaker it counts against (`failed` reopens it); every
        other trial is freed, its breaker left half-open: a client's own 4xx says nothing about
        the upstream, a 5xx nothing about the pair's rate limit, a 429 nothing about the upstream.
        """
        counted: str | None = None
        if error.code in NEVER_RETRIED_CODES:
            pass  # a spent quota: held, every client would hear a retryable rate limit instead
        elif error.reason == "429":
            counted = _pair(upstream, model)
            await self.failed(counted, retry_after=error.retry_after, rate_limited=True)
        elif tries_next_candidate(error):
            counted = upstream
            await self.failed(upstream, retry_after=error.retry_after)
        await self._release_all([trial for trial in trials if trial[0] != counted])

    async def answered(self, upstream: str, model: str) -> None:
        """The attempt at (upstream, model) succeeded: close both breakers."""
        if self.settled(upstream, model):
            return  # both closed with no failure counted: `succeeded` changes nothing
        pair = _pair(upstream, model)
        await self.succeeded(pair)
        await self.succeeded(upstream)

    async def pair_reopens_in(self, upstream: str, model: str) -> float:
        """Seconds until both breakers of (upstream, model) let a request through."""
        return max(await self.reopens_in(upstream), await self.reopens_in(_pair(upstream, model)))

    async def _read(self, name: str) -> BreakerRecord:
        record = await self._store.read(name)
        self._saw(name, record)
        return record

    def _saw(self, name: str, record: BreakerRecord) -> None:
        """Note the record read or written: report its state when it differs from the last one reported."""
        # Reported per upstream; a (upstream, model) rate-limit hold is not an upstream's state.
        if _PAIR_SEPARATOR in name:
            return
        self._seen[name] = record
        state = _reported(record, self._clock())
        if self._reported.get(name, BreakerState.CLOSED) is not state:
            self._reported[name] = state
            if self._on_change is not None:
                self._on_change(name, state)


_PAIR_SEPARATOR = "\x00"


def _pair(upstream: str, model: str) -> str:
    return f"{upstream}{_PAIR_SEPARATOR}{model}"
