"""Admission, live requests and the graceful drain of one process.

On SIGTERM or SIGINT the process drains: readiness turns 503 at once, new chat requests get 503
with Retry-After, live requests get `drain_timeout` seconds to finish, and each one still open
then ends with an explicit shutdown event (its guard cancels it, see guard.py). Only then does the
process stop listening and exit 0. The listener stays open during the drain so that probes and
late requests get an answer instead of a refused connection. A second signal skips the wait.
The signal handlers that start the drain are `signals_ctx` in contexts.py.

Readers of browser streams (`reading`) are not live requests: with Redis their stream may be
generated on another instance and go on after this one exits. The drain ends them once its live
requests are over (at once when there are none, at the latest just after `drain_timeout`): each
sends what the store already holds, then the shutdown event with its retry hint, and reconnects
elsewhere with Last-Event-ID, losing nothing. They do not hold the exit up: the stream does not
need this process, and the reconnect lands on one that stays.

It also spaces out the teardowns of requests whose clients left (`after_leaving`), one a loop
turn, so that the loop reads its sockets between them, and gives the C heap's free memory back
once the live requests fell to under half their peak (allocator.py).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Protocol

import structlog

from .allocator import HeapTrim
from .errors import ServiceUnavailableError
from .guard import StreamGuard

log = structlog.get_logger("sluice.lifecycle")

# Seconds the streams ended by a drain get to write their shutdown event before the exit.
FINAL_EVENT_GRACE = 2.0


class Endable(Protocol):
    """What the drain can end: a live request's guard, or a browser stream's reader."""

    def shutdown(self) -> None: ...


class Lifecycle:
    """Tracks live requests and decides whether new ones are admitted."""

    def __init__(
        self,
        *,
        retry_after: int,
        max_live: int,
        heap: HeapTrim | None = None,
        reader_heap: HeapTrim | None = None,
        live_gauge: Any | None = None,
    ) -> None:
        """`live_gauge`: the metric of live requests (`sluice_live_streams`), moved as `track` blocks come and go.

        `heap` trims after many live requests ended, `reader_heap` after many browser stream readers
        left (a crowd of readers holds its transports' buffers as live streams do, but is no live request).
        """
        self.draining = False
        # Moved by `_Tracked` through its value, as metrics.count does: prometheus-client's
        # `track_inprogress` built a context manager and checked the metric twice per request.
        self._live_value = live_gauge._value if live_gauge is not None else None
        self._heap = heap if heap is not None else HeapTrim()
        self._reader_heap = reader_heap if reader_heap is not None else HeapTrim()
        self._retry_after = retry_after
        self._max_live = max_live
        self._live: set[StreamGuard] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._leaving: deque[asyncio.Future[None]] = deque()
        self._letting_through = False
        self._readers: set[Endable] = set()
        self._unread = asyncio.Event()
        self._unread.set()
        self._readers_ended = False

    @property
    def live(self) -> int:
        """Requests being served now."""
        return len(self._live)

    @property
    def readers(self) -> int:
        """Connections reading a browser stream now."""
        return len(self._readers)

    @property
    def retry_after(self) -> int:
        """Seconds a client ended or refused by the drain is told to wait: Retry-After, and `retry:` in ms."""
        return self._retry_after

    @contextmanager
    def reading(self, reader: Endable) -> Iterator[None]:
        """Count a browser stream's reader while the block runs; the drain ends it (see the module's docstring)."""
        readers = self._readers
        readers.add(reader)
        self._unread.clear()
        self._reader_heap.rose(len(readers))
        try:
            if self._readers_ended:
                reader.shutdown()  # came in after the drain ended the others: it ends the same way at once
            yield
        finally:
            readers.discard(reader)
            self._reader_heap.fell(len(readers))
            if not readers:
                self._unread.set()

    def admit(self) -> None:
        """Raise 503 with Retry-After while draining or at the live-request cap."""
        if self.draining:
            raise self.shutting_down("Sluice is shutting down; retry on another instance.")
        if self._max_live and len(self._live) >= self._max_live:
            raise ServiceUnavailableError(
                "Sluice is at capacity; retry shortly.",
                code="overloaded",
                headers={"Retry-After": str(self._retry_after)},
            )

    def shutting_down(self, message: str = "Sluice is shutting down; retry the request.") -> ServiceUnavailableError:
        """The 503 `server_shutting_down` of a drain: a new request's, or a live one's the drain ended.

        Every one carries Retry-After, as the README's failure table promises: a client (or nginx's
        `proxy_next_upstream`) learns when to come back whether it was refused or ended.
        """
        return ServiceUnavailableError(
            message, code="server_shutting_down", headers={"Retry-After": str(self._retry_after)}
        )

    def track(self, guard: StreamGuard) -> _Tracked:
        """Count the request as live while the block runs."""
        return _Tracked(self._live, self._idle, guard, self._heap, self._live_value)

    async def after_leaving(self) -> None:
        """Wait for the turn of a request whose client left (its upstream already closed) to be torn down.

        When a crowd leaves, aiohttp cancels every handler in one loop turn and uvloop runs them all
        before it reads its sockets again: a client whose FIN came meanwhile waited for every one of
        those teardowns before its upstream was closed (bench crowd: about 3 ms behind 45 of them).
        Let through one a turn, the loop reads between them, and such a FIN closes its upstream at
        once (sse.py); a cancelled wait (a drain) gives its turn up.
        """
        loop = asyncio.get_running_loop()
        turn = loop.create_future()
        self._leaving.append(turn)
        if not self._letting_through:
            self._letting_through = True
            loop.call_soon(self._let_one_through)
        await turn

    def _let_one_through(self) -> None:
        leaving = self._leaving
        while leaving:
            turn = leaving.popleft()
            if not turn.done():
                turn.set_result(None)  # its task resumes on the next turn, after the loop read its sockets
                break
        if leaving:
            asyncio.get_running_loop().call_soon(self._let_one_through)
        else:
            self._letting_through = False

    async def drain(self, grace: float) -> None:
        """Refuse new work, let live requests finish for `grace` seconds, then end the rest."""
        self.draining = True
        log.info("drain_started", live=self.live, readers=self.readers, drain_timeout=grace)
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            self._end_live()
        try:
            await asyncio.wait_for(self._idle.wait(), FINAL_EVENT_GRACE)
        except TimeoutError:
            log.warning("drain_incomplete", live=self.live)
        # After the live requests: a reader of a stream generated here has its final event stored by now.
        self._end_readers()
        try:
            await asyncio.wait_for(self._unread.wait(), FINAL_EVENT_GRACE)
        except TimeoutError:
            log.warning("drain_incomplete", readers=self.readers)
        log.info("drain_finished")

    def end_all(self) -> None:
        """End every live request and browser stream reader now with a shutdown event."""
        self._end_live()
        self._end_readers()

    def _end_live(self) -> None:
        if self._live:
            log.info("drain_ending_streams", live=self.live)
        for guard in list(self._live):
            guard.shutdown()

    def _end_readers(self) -> None:
        self._readers_ended = True
        if self._readers:
            log.info("drain_ending_readers", readers=self.readers)
        for reader in list(self._readers):
            reader.shutdown()


class _Tracked:
    """`Lifecycle.track`'s block: a plain class, where `@contextmanager` cost a generator per request."""

    __slots__ = ("_gauge", "_guard", "_heap", "_idle", "_live")

    def __init__(
        self, live: set[StreamGuard], idle: asyncio.Event, guard: StreamGuard, heap: HeapTrim, gauge: Any | None
    ) -> None:
        self._live = live
        self._idle = idle
        self._guard = guard
        self._heap = heap
        self._gauge = gauge

    def __enter__(self) -> None:
        self._live.add(self._guard)
        self._idle.clear()
        self._heap.rose(len(self._live))
        if self._gauge is not None:
            self._gauge.inc(1)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._gauge is not None:
            self._gauge.inc(-1)
        live = self._live
        live.discard(self._guard)
        self._heap.fell(len(live))
        if not live:
            self._idle.set()
