"""Enforce one stream's deadlines with a single timer, and end it on request.

A relay reports what it is doing (`reading()` the upstream, `writing()` to the client) by
setting two timestamps; nothing is scheduled per chunk. One timer wakes at the nearest
deadline, checks the timestamps and, when a limit has passed, records why and cancels the
stream's task, the same way `asyncio.timeout` does. The relay then tells a real cancellation
(the client left) from a guard's (`expired` is set) and ends the stream explicitly. The timer is
an entry in the application's `Timers` (timers.py) when given one: a loop timer of its own cost a
live stream about 550 bytes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from .timers import Entry, Timers

if TYPE_CHECKING:
    from .settings import Settings


class Outcome(StrEnum):
    """How a request ended, as the access log and metrics name it."""

    COMPLETED = "completed"
    CLIENT_DISCONNECTED = "client_disconnected"
    UPSTREAM_ERROR = "upstream_error"
    TIMEOUT = "timeout"
    SHUTDOWN = "shutdown"
    REJECTED = "rejected"


class Expiry(StrEnum):
    """Why a guard ended a stream."""

    FIRST_TOKEN = "first_token_timeout"
    IDLE = "idle_timeout"
    TOTAL = "total_timeout"
    SEND = "send_timeout"
    SHUTDOWN = "shutdown"
    KEY_REVOKED = "key_revoked"


@dataclass(frozen=True, slots=True)
class Deadlines:
    """Seconds allowed for each phase of a stream."""

    first_token: float
    idle: float
    total: float
    send: float

    @classmethod
    def for_stream(cls, settings: Settings, *, continued: bool = False) -> Deadlines:
        """A stream's deadlines, attached or detached, from the settings.

        The routing enforces header_timeout and first_token_timeout per attempt, so the guard's
        own first-token deadline only bounds the whole routing (attempts, waits, fallbacks,
        hedges): first_token_timeout here cut a routing still waiting out a Retry-After, or
        moving to a slower candidate. `continued`: the continuation watches the idle gap itself,
        and the guard leaves it room to open.
        """
        up = settings.upstream
        idle = up.idle_timeout + (up.header_timeout + up.first_token_timeout if continued else 0)
        return cls(first_token=up.total_timeout, idle=idle, total=up.total_timeout, send=settings.stream.send_timeout)


class StreamGuard:
    """Watch one stream's task and cancel it when a deadline passes or shutdown asks."""

    def __init__(
        self,
        deadlines: Deadlines,
        *,
        on_send_timeout: Callable[[], None] | None = None,
        task: asyncio.Task[object] | None = None,
        timers: Timers | None = None,
    ) -> None:
        self._timers = self.timers = timers if timers is not None else Timers()
        self._loop = self.loop = self._timers.loop  # held: see Timers.loop
        self._task = task or asyncio.current_task(self._loop)  # given the loop: no `getpid` (see Timers.loop)
        self._deadlines = deadlines
        # Any phase that starts later ends no sooner than this after it starts, so waking at
        # least this often keeps every deadline exact without touching the timer per chunk.
        self._horizon = min(deadlines.idle, deadlines.send)
        self._on_send_timeout = on_send_timeout
        now = self._loop.time()
        self._started = now
        self._reading_since: float | None = now
        self._writing_since: float | None = None
        self._first_token_seen = False
        self._timer: Entry | None = None
        self.expired: Expiry | None = None
        self._arm(now + min(deadlines.first_token, deadlines.total, self._horizon))

    def reading(self) -> None:
        """The relay now waits for the upstream."""
        self._writing_since = None
        self._reading_since = self._loop.time()

    def writing(self, now: float | None = None) -> None:
        """A chunk arrived and the relay now writes to the client (`now`: the loop's time, if read)."""
        self._first_token_seen = True
        self._reading_since = None
        self._writing_since = self._loop.time() if now is None else now

    def set_send_timeout_callback(self, callback: Callable[[], None]) -> None:
        """Call `callback` (abort the client's transport) when a write stalls past `send`."""
        self._on_send_timeout = callback

    def stalled(self) -> None:
        """End the stream now: a write to the client has waited longer than `send`."""
        self._expire(Expiry.SEND)

    def shutdown(self) -> None:
        """End the stream now because the process is draining."""
        self._expire(Expiry.SHUTDOWN)

    def revoke(self) -> None:
        """End the stream now because its gateway key was revoked or rotated."""
        self._expire(Expiry.KEY_REVOKED)

    def close(self) -> None:
        """Stop watching; the stream is over."""
        self._stop_timer()
        # Nothing is cancelled or aborted from now on. Held, the task and the response's abort
        # would each close a cycle (the task's result is the response, whose stall callback is
        # this guard): garbage for the collector, not for reference counting, on every request.
        self._task = None
        self._on_send_timeout = None

    def consume_expiry(self) -> Expiry | None:
        """After a CancelledError: the guard's reason, with its cancellation undone, or None.

        None means the cancellation came from elsewhere (the client left) and must propagate.
        """
        if self.expired is None or self._task is None:
            return None
        if self._task.uncancel() > 0:
            return None
        return self.expired

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timers.cancel(self._timer)
            self._timer = None

    def _arm(self, when: float) -> None:
        self._timer = self._timers.at(when, self)

    def timer_fired(self) -> None:
        """The timer's time came (Timers calls this): expire the stream, or wake again at the next deadline."""
        self._timer = None
        now = self._loop.time()
        d = self._deadlines
        total_at = self._started + d.total
        if now >= total_at:
            self._expire(Expiry.TOTAL)
            return
        next_at = min(total_at, now + self._horizon)
        if self._writing_since is not None:
            send_at = self._writing_since + d.send
            if now >= send_at:
                self._expire(Expiry.SEND)
                return
            next_at = min(next_at, send_at)
        elif self._reading_since is not None:
            limit = d.idle if self._first_token_seen else d.first_token
            read_at = self._reading_since + limit
            if now >= read_at:
                self._expire(Expiry.IDLE if self._first_token_seen else Expiry.FIRST_TOKEN)
                return
            next_at = min(next_at, read_at)
        self._arm(next_at)

    def _expire(self, reason: Expiry) -> None:
        if self.expired is not None:
            return
        self.expired = reason
        self._stop_timer()
        if reason is Expiry.SEND and self._on_send_timeout is not None:
            self._on_send_timeout()
        if self._task is not None and not self._task.done():
            self._task.cancel(f"stream ended: {reason}")
