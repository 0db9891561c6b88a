"""Many deadlines on one loop timer: the streams' heartbeats and their guards' deadlines.

A loop timer per stream deadline costs about 550 bytes with uvloop (its handle, libuv's timer,
the bound method and a copy of the context), and a live stream holds two: its heartbeat and its
guard's next check. One `Timers` per application keeps every stream's deadlines in a heap of
small entries (a three-item list: when, order, owner; about 150 bytes) and keeps one loop timer
armed at the earliest. Nothing is rounded: an entry fires in the loop turn its time comes, as
with its own loop timer. A cancelled entry lets go of its owner at once and leaves the heap when
its time comes, or sooner when cancelled entries are the larger part of it.

Owners are called in an empty context: neither the heartbeat nor the guard reads a context
variable, and one timer serving many requests must not run one in another's (a log line would
carry another request's id).
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
from types import TracebackType
from typing import Protocol, TypeAlias

import structlog

log = structlog.get_logger("sluice.timers")

# Below this many entries a heap of cancelled ones is not worth rebuilding.
_COMPACT_AT = 64
# uvloop's clock counts milliseconds and rounds a timer's delay to the nearest one: its timer can
# run up to half a millisecond before the time asked. What is due within this runs in that turn
# (an owner checks the clock itself where it matters: the guard does), not in a spin until the
# clock ticks.
_DUE_WITHIN = 0.001


class Timed(Protocol):
    """What a deadline calls when its time comes."""

    def timer_fired(self) -> None:
        """The deadline passed."""


# One deadline in the heap: [when, order, owner]; the owner is None once cancelled or fired. A
# plain list: a subclass of list cost a type call per deadline (six a stream) for a name.
Entry: TypeAlias = list[object]


class Timers:
    """Deadlines of many owners on one loop timer; bound to the running loop at its first use."""

    __slots__ = ("_context", "_handle", "_heap", "_loop", "_next_at", "_order", "_stale")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._heap: list[Entry] = []
        self._order = itertools.count()
        self._handle: asyncio.TimerHandle | None = None
        self._next_at = 0.0
        self._stale = 0
        self._context = contextvars.Context()

    def __len__(self) -> int:
        """Deadlines pending, cancelled ones not counted."""
        return len(self._heap) - self._stale

    def at(self, when: float, owner: Timed) -> Entry:
        """Call `owner.timer_fired()` once the loop's clock reaches `when`; `cancel` the entry to stop it."""
        entry: Entry = [when, next(self._order), owner]
        heapq.heappush(self._heap, entry)
        if self._handle is None or when < self._next_at:
            self._arm(when)
        return entry

    def later(self, delay: float, owner: Timed) -> Entry:
        """`at` the loop's time plus `delay`."""
        loop = self._loop or self._bind()
        return self.at(loop.time() + delay, owner)

    def time(self) -> float:
        """The loop's clock, as deadlines are given."""
        return (self._loop or self._bind()).time()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop these deadlines run on.

        Held, not asked for: on Python 3.11 every `asyncio.get_running_loop()` makes a `getpid`
        system call (a fork check), and a stream asked some fifteen times.
        """
        return self._loop or self._bind()

    def deadline(self, when: float) -> Deadline:
        """`asyncio.timeout_at(when)` for the current task, as an entry here: see Deadline."""
        return Deadline(self, when)

    def cancel(self, entry: Entry) -> None:
        """Stop `entry` (nothing happens if it fired already); its owner is let go at once."""
        if entry[2] is None:
            return
        entry[2] = None
        self._stale += 1
        heap = self._heap
        if self._stale * 2 > len(heap) and len(heap) >= _COMPACT_AT:
            self._heap = heap = [e for e in heap if e[2] is not None]
            heapq.heapify(heap)
            self._stale = 0

    def close(self) -> None:
        """Drop every deadline and the loop timer."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        for entry in self._heap:
            entry[2] = None
        self._heap.clear()
        self._stale = 0

    def _bind(self) -> asyncio.AbstractEventLoop:
        self._loop = asyncio.get_running_loop()
        return self._loop

    def _arm(self, when: float) -> None:
        loop = self._loop or self._bind()
        if self._handle is not None:
            self._handle.cancel()
        self._next_at = when
        self._handle = loop.call_at(when, self._fire, context=self._context)

    def _fire(self) -> None:
        self._handle = None
        loop = self._loop
        assert loop is not None
        heap = self._heap
        now = loop.time() + _DUE_WITHIN
        while heap and heap[0][0] <= now:  # type: ignore[operator]
            entry = heapq.heappop(heap)
            owner = entry[2]
            if owner is None:
                self._stale -= 1
                continue
            entry[2] = None
            try:
                owner.timer_fired()  # type: ignore[attr-defined]
            except Exception:  # one owner's failure must not stop the others' deadlines
                log.exception("timer_callback_failed")
        while heap and heap[0][2] is None:
            heapq.heappop(heap)
            self._stale -= 1
        if heap:
            self._arm(heap[0][0])  # type: ignore[arg-type]


class Deadline:
    """`with timers.deadline(when):` cancels the task at `when` and raises TimeoutError out of the block.

    What `asyncio.timeout_at` does, with the same rule to tell its own cancellation from another
    (`Task.uncancel`), on an entry of a `Timers` heap (the upstream pools' own) instead of a loop
    timer of its own: about 1 us a request where `asyncio.timeout` and one `reschedule` cost 8.
    Like every entry here, it may fire up to `_DUE_WITHIN` before `when`.
    """

    __slots__ = ("_cancelling", "_entry", "_task", "_timers", "_when", "expired")

    def __init__(self, timers: Timers, when: float) -> None:
        self._timers = timers
        self._entry: Entry | None = None
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._when = when
        self.expired = False

    def __enter__(self) -> Deadline:
        task = asyncio.current_task(self._timers.loop)  # given the loop: no `getpid` (see Timers.loop)
        if task is None:
            raise RuntimeError("Deadline must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._entry = self._timers.at(self._when, self)
        return self

    def reschedule(self, when: float) -> None:
        """Move the deadline to `when`."""
        if self.expired:
            raise RuntimeError("Deadline already expired")
        if self._entry is not None:
            self._timers.cancel(self._entry)
        self._entry = self._timers.at(when, self)

    def timer_fired(self) -> None:
        """The time came (Timers calls this): cancel the task."""
        self._entry = None
        if self._task is not None and not self._task.done():
            self.expired = True
            self._task.cancel()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._entry is not None:
            self._timers.cancel(self._entry)
            self._entry = None
        task, self._task = self._task, None
        if self.expired and task is not None and task.uncancel() <= self._cancelling and kind is asyncio.CancelledError:
            raise TimeoutError from error
