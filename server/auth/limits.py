"""Per-key limits: requests and tokens per minute, and concurrent streams.

Requests and tokens are token buckets, as OpenAI's own limits behave: a bucket holds up to the
per-minute limit and refills continuously at that rate, so a key may burst up to its limit and
then goes on at the limit's pace. Tokens are reserved up front (a prompt estimate plus the
request's max tokens, or the key's completion reserve without them) and settled with the real usage
when the request ends.

Everything goes through `LimitStore`, one small interface with the check-and-take done at once,
so a shared store (Redis, with a Lua script) can count across instances; `MemoryLimitStore`
counts in this process.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

WINDOW_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """A key's limits; 0 means none."""

    rpm: int = 0
    tpm: int = 0
    max_streams: int = 0
    # Tokens reserved on tpm for a completion whose request sets no max_tokens; 0: none.
    completion_reserve: int = 0


class Exceeded(StrEnum):
    """Which limit refused a request."""

    REQUESTS = "requests"
    TOKENS = "tokens"
    STREAMS = "streams"


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of a take, with what OpenAI's rate-limit headers report."""

    exceeded: Exceeded | None
    limits: KeyLimits
    remaining_requests: int
    remaining_tokens: int
    reset_requests: float
    reset_tokens: float
    retry_after: float
    # True when a shared store could not be reached and this process counted the take itself:
    # what it took goes back here too, never to the shared store (see RedisLimitStore.give_back).
    counted_here: bool = False
    # The epoch of the shared count it took in (Redis: its key's hash's), which the give-back of what
    # it took carries; 0 when it took there nothing (refused, counted here, or a store without one).
    epoch: int = 0

    @property
    def allowed(self) -> bool:
        """True when nothing was exceeded and the amounts were taken."""
        return self.exceeded is None


@dataclass(frozen=True, slots=True)
class Usage:
    """A key's use now: streams in flight, and what its buckets hold taken (0 where it has no limit)."""

    streams: int
    requests: int
    tokens: int


class LimitStore(Protocol):
    """Counts each key's use; every method is atomic per key."""

    async def take(self, name: str, limits: KeyLimits, *, requests: int, tokens: int, streams: int) -> Decision:
        """Take the amounts if every limit allows them all; else take nothing and say which limit refused."""

    async def give_back(
        self,
        name: str,
        limits: KeyLimits,
        *,
        tokens: int,
        streams: int,
        slot: Decision | None = None,
        reservation: Decision | None = None,
    ) -> None:
        """Return unused tokens (negative: charge more) and release stream slots.

        `slot`, `reservation`: the decisions of the takes that took the streams and the tokens (a
        request's two takes), so that each part goes back where, and in the epoch, it was counted.
        """

    async def usage(self, name: str, limits: KeyLimits) -> Usage | None:
        """Read the key's use without taking anything; None when it cannot be known now."""


@dataclass(slots=True)
class _Bucket:
    level: float
    at: float

    def refill(self, capacity: int, now: float) -> None:
        self.level = min(capacity, self.level + (now - self.at) * capacity / WINDOW_SECONDS)
        self.at = now

    def seconds_until(self, amount: float, capacity: int) -> float:
        """Seconds until the bucket holds `amount`."""
        missing = amount - self.level
        return max(0.0, missing * WINDOW_SECONDS / capacity) if capacity else 0.0


@dataclass(slots=True)
class _KeyState:
    requests: _Bucket
    tokens: _Bucket
    streams: int = 0


class MemoryLimitStore:
    """LimitStore in this process's memory; `clock` is injectable for tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._keys: dict[str, _KeyState] = {}

    def _state(self, name: str, limits: KeyLimits, now: float) -> _KeyState:
        state = self._keys.get(name)
        if state is None:
            state = self._keys[name] = _KeyState(_Bucket(limits.rpm, now), _Bucket(limits.tpm, now))
        state.requests.refill(limits.rpm, now)
        state.tokens.refill(limits.tpm, now)
        return state

    async def take(self, name: str, limits: KeyLimits, *, requests: int, tokens: int, streams: int) -> Decision:
        now = self._clock()
        state = self._state(name, limits, now)
        exceeded: Exceeded | None = None
        retry_after = 0.0
        if limits.rpm and state.requests.level < requests:
            exceeded = Exceeded.REQUESTS
            retry_after = state.requests.seconds_until(requests, limits.rpm)
        elif limits.tpm and tokens and state.tokens.level < min(tokens, limits.tpm):
            # A request asking for more than the whole limit waits for a full bucket, then may go.
            exceeded = Exceeded.TOKENS
            retry_after = state.tokens.seconds_until(min(tokens, limits.tpm), limits.tpm)
        elif limits.max_streams and streams and state.streams + streams > limits.max_streams:
            exceeded = Exceeded.STREAMS
            retry_after = 1.0  # a slot frees when a stream ends; nothing predicts when
        if exceeded is None:
            if limits.rpm:
                state.requests.level -= requests
            if limits.tpm:
                state.tokens.level -= tokens
            state.streams += streams
        return Decision(
            exceeded=exceeded,
            limits=limits,
            remaining_requests=max(0, math.floor(state.requests.level)) if limits.rpm else 0,
            remaining_tokens=max(0, math.floor(state.tokens.level)) if limits.tpm else 0,
            reset_requests=state.requests.seconds_until(limits.rpm, limits.rpm),
            reset_tokens=state.tokens.seconds_until(limits.tpm, limits.tpm),
            retry_after=retry_after,
        )

    async def give_back(
        self,
        name: str,
        limits: KeyLimits,
        *,
        tokens: int,
        streams: int,
        slot: Decision | None = None,
        reservation: Decision | None = None,
    ) -> None:
        # Every take is counted here, in one epoch: where each part goes back is never a question.
        now = self._clock()
        state = self._state(name, limits, now)
        if limits.tpm:
            state.tokens.level = min(limits.tpm, state.tokens.level + tokens)
        state.streams = max(0, state.streams - streams)

    async def usage(self, name: str, limits: KeyLimits) -> Usage | None:
        if name not in self._keys:
            return Usage(streams=0, requests=0, tokens=0)
        state = self._state(name, limits, self._clock())
        return Usage(
            streams=state.streams,
            requests=taken(state.requests.level, limits.rpm),
            tokens=taken(state.tokens.level, limits.tpm),
        )


def taken(level: float, capacity: int) -> int:
    """What a bucket of `capacity` holding `level` has had taken and not yet refilled (0: no limit)."""
    return max(0, math.ceil(capacity - level)) if capacity else 0


def rate_limit_headers(decision: Decision) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers for the limits a key has, plus Retry-After when refused."""
    headers: dict[str, str] = {}
    limits = decision.limits
    if limits.rpm:
        headers["x-ratelimit-limit-requests"] = str(limits.rpm)
        headers["x-ratelimit-remaining-requests"] = str(decision.remaining_requests)
        headers["x-ratelimit-reset-requests"] = _duration(decision.reset_requests)
    if limits.tpm:
        headers["x-ratelimit-limit-tokens"] = str(limits.tpm)
        headers["x-ratelimit-remaining-tokens"] = str(decision.remaining_tokens)
        headers["x-ratelimit-reset-tokens"] = _duration(decision.reset_tokens)
    if not decision.allowed:
        headers["Retry-After"] = str(max(1, math.ceil(decision.retry_after)))
    return headers


def _duration(seconds: float) -> str:
    """OpenAI's format: `1s`, `6m0s`, `250ms`."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    whole = math.ceil(seconds)
    minutes, rest = divmod(whole, 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"
