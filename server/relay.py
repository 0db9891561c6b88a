"""Relay upstream chunks to the client one at a time, and end every stream explicitly.

Two paths, one behaviour. An open upstream stream written to the SSE response is pushed: its
batches are encoded and written from the upstream connection's data callback, with no task
wake-up per event (issue 14: a paced stream's every event arrives in a read of its own); once
the client's buffer is over its mark, the upstream's reading stops and the relay's task waits
for room, then pushes again. Any other source or sink (a test's fakes, a stream being continued,
a detached generation's store) is pulled: each write awaited before the next chunk is read.
Either way a client that stops reading stops the relay, and the upstream's TCP window then
slows the upstream: nothing queues in Sluice.
It ends a stream in exactly one of these ways:

- the upstream finished: the dialect's `done` event (also when the upstream's body ends after a
  finish reason without `[DONE]`);
- the upstream failed, sent an error, or stopped before a finish reason: a final error event;
- a deadline passed or the process is draining (the guard cancelled the task): a final error event;
- the client accepted nothing for `send` seconds: its connection is aborted and the cancellation
  propagates, as for a client that left;
- the client left (the task was cancelled from outside): the cancellation propagates, and the
  caller's `finally` closes the upstream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from typing import Protocol

import aiohttp
import structlog

from .access import RequestRecord
from .chunks import Chunk
from .dialects import Dialect
from .errors import (
    GatewayError,
    KeyRevokedError,
    ServiceUnavailableError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
)
from .guard import Expiry, Outcome, StreamGuard
from .relay_events import GapObserver, RelayEvents

log = structlog.get_logger("sluice.relay")


class Sink(Protocol):
    """Where events go: the SSE response, or a test's recorder.

    A sink that also has `write_last(data)` gets the stream's last bytes through it, so that they
    and the end of the body leave in one write (see SSEResponse.write_last).
    """

    async def write(self, data: bytes) -> None: ...


class PushSink(Sink, Protocol):
    """A sink that can also write from a callback, without awaiting (the SSE response)."""

    def send_now(self, data: bytes) -> bool:
        """Write at once; False when the client's buffer is over its mark."""

    async def wait_for_room(self) -> None:
        """Return once the client's buffer is under its mark again."""

    def on_client_gone(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` as soon as the client's connection is lost; return what unregisters it."""

    @property
    def client_gone(self) -> bool:
        """True once the client's connection is closing or lost."""


class PushSource(Protocol):
    """An open upstream stream that hands its batches over from its data callback (UpstreamStream)."""

    @property
    def finished(self) -> bool:
        """True once the upstream sent `[DONE]`."""

    @property
    def ended(self) -> bool:
        """True once every batch was handed over."""

    def push(self, on_batch: Callable[[list[Chunk]], bool]) -> asyncio.Future[None]:
        """Call `on_batch` per batch until it returns False, the end or a failure (see UpstreamStream.push)."""

    def stop_push(self) -> None:
        """Hand over nothing more."""

    def close(self) -> None:
        """Close the upstream request (idempotent)."""


class _NoGaps:
    def observe(self, amount: float) -> None:
        pass

    def flush(self) -> None:
        pass


async def relay(
    chunks: AsyncIterable[Sequence[Chunk]],
    dialect: Dialect,
    sink: Sink,
    guard: StreamGuard,
    record: RequestRecord,
    *,
    final_write_timeout: float,
    shutdown_retry_ms: int | None = None,
    gaps: GapObserver | None = None,
    choices: int = 1,
) -> None:
    """Forward batches of `chunks` to `sink` in `dialect` until the stream ends; see the module docstring.

    `choices` is the request's `n`; the stream has finished once every choice that appeared has
    (an upstream may ignore `n`).
    """
    events = RelayEvents(dialect, record, gaps or _NoGaps(), choices)
    try:
        if hasattr(chunks, "push") and hasattr(sink, "send_now"):
            # The push path, written out here rather than as a coroutine of its own: a live
            # stream's suspended coroutines are each a frame kept for its whole life (~300 bytes).
            push_sink: PushSink = sink  # type: ignore[assignment]  # not `cast`: a call per stream
            stream: PushSource = chunks  # type: ignore[assignment]  # an open upstream stream (UpstreamStream)
            pushing = _Pushing(stream, events, push_sink, guard, record)
            guard.reading()
            # A client that leaves closes the upstream at once; the cancellation that follows ends the relay.
            unregister = push_sink.on_client_gone(stream.close)
            on_batch = pushing.on_batch
            try:
                # Batches go out from the upstream connection's data callback, with no task wake-up
                # per event. The task sleeps while events flow; it wakes when the stream ends or
                # fails, or when the client's buffer went over its mark: it then waits for room (the
                # send deadline running), while the upstream connection, no longer drained, fills
                # its small read buffer and stops reading.
                while True:
                    await stream.push(on_batch)
                    if stream.ended:
                        break
                    guard.writing()
                    await push_sink.wait_for_room()
                    if push_sink.client_gone:
                        # Its connection was lost while full: pushing again would resume the
                        # upstream and read a burst for nobody.
                        raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")
                    guard.reading()
            finally:
                unregister()
                stream.stop_push()
            await _finish(events, sink, guard, pushing.held)
            record.outcome = Outcome.COMPLETED
        else:
            await _forward(chunks, events, sink, guard, record)
    except asyncio.CancelledError:
        if guard.expired is Expiry.SEND:
            # The client accepts nothing: its connection is aborted, so no final event can reach
            # it; the cancellation ends the handler like a disconnect, logged as a timeout.
            record.outcome = Outcome.TIMEOUT
            record.error_code = str(Expiry.SEND)
            raise
        expiry = guard.consume_expiry()
        if expiry is None:
            record.outcome = record.outcome or Outcome.CLIENT_DISCONNECTED
            raise
        if expiry is Expiry.IDLE and events.complete:
            # Every choice finished, then the upstream neither sent [DONE] nor ended its body: the
            # answer is whole (its usage chunk, if one was still to come, is not), so it ends as done.
            record.outcome = Outcome.COMPLETED
            await _write_final(sink, events.done(), final_write_timeout)
            return
        record.outcome = _EXPIRY_OUTCOMES.get(expiry, Outcome.TIMEOUT)
        error, retry_ms = _expiry_error(expiry, shutdown_retry_ms)
        record.error_code = error.code  # the code the client reads, not the guard's name for the expiry
        await _write_final(sink, dialect.failure(error, retry_ms=retry_ms), final_write_timeout)
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        record.outcome = Outcome.CLIENT_DISCONNECTED
    except GatewayError as failure:
        # The routing's own deadlines (header, first token) end a stream as a timeout too.
        record.outcome = Outcome.TIMEOUT if isinstance(failure, UpstreamTimeoutError) else Outcome.UPSTREAM_ERROR
        record.error_code = failure.code
        await _write_final(sink, dialect.failure(failure), final_write_timeout)
    except (aiohttp.ClientError, TimeoutError) as exc:
        record.outcome = Outcome.UPSTREAM_ERROR
        error = UpstreamProtocolError("The upstream connection failed mid-stream.")
        record.error_code = error.code
        log.warning("upstream_stream_failed", error=type(exc).__name__)
        await _write_final(sink, dialect.failure(error), final_write_timeout)
    finally:
        events.flush_gaps()


async def _forward(
    batches: AsyncIterable[Sequence[Chunk]],
    events: RelayEvents,
    sink: Sink,
    guard: StreamGuard,
    record: RequestRecord,
) -> None:
    """Pull each batch, then await its write: for any chunk source and any sink."""
    loop = asyncio.get_running_loop()
    held = b""
    guard.reading()
    async for batch in batches:
        now = loop.time()
        guard.writing(now)
        data = events.encode(batch, now)
        if data is not None:
            if events.failure is None and record.finish_reason is not None and getattr(batches, "finished", False):
                # The upstream's last read: these bytes, the final event and the body's end share one write.
                held = data
            else:
                await sink.write(data)
        if events.failure is not None:
            raise events.take_failure()
        guard.reading()
    await _finish(events, sink, guard, held)
    record.outcome = Outcome.COMPLETED


class _Pushing:
    """The push relay's per-batch step, run inside the upstream connection's data callback.

    An object with slots rather than a closure: a closure over these would keep a cell per name
    for the stream's whole life (about 400 bytes more per live stream).
    """

    __slots__ = ("events", "guard", "held", "loop", "record", "sink", "stream")

    def __init__(
        self, stream: PushSource, events: RelayEvents, sink: PushSink, guard: StreamGuard, record: RequestRecord
    ) -> None:
        self.stream = stream
        self.events = events
        self.sink = sink
        self.guard = guard
        self.record = record
        self.loop = guard.loop
        self.held = b""

    def on_batch(self, batch: list[Chunk]) -> bool:
        """Write `batch`; False once the client's buffer is over its mark."""
        events, sink, guard = self.events, self.sink, self.guard
        now = self.loop.time()
        guard.writing(now)
        data = events.encode(batch, now)
        if events.failure is not None:
            if data is not None:
                sink.send_now(data)
            raise events.take_failure()
        guard.reading()
        if data is None:
            return True
        if self.record.finish_reason is not None and self.stream.finished:
            self.held = data  # the last read: see _forward
            return True
        return sink.send_now(data)


def _finish(events: RelayEvents, sink: Sink, guard: StreamGuard, held: bytes) -> Awaitable[None]:
    """The last write of a stream whose upstream body ended: the done event; raise if it never finished.

    Not a coroutine: the caller awaits the sink's own write, with no frame of this in between, then
    notes the stream completed.
    """
    if held and not events.complete:
        # The last read was held to leave with the done event; what it relayed still goes out first.
        return _write_held_then_finish(events, sink, guard, held)
    done = events.done()
    events.flush_gaps()  # before the last write: a client that saw the end finds its gaps in /metrics
    guard.writing()
    write_last = getattr(sink, "write_last", None)
    return (sink.write if write_last is None else write_last)(held + done if held else done)


async def _write_held_then_finish(events: RelayEvents, sink: Sink, guard: StreamGuard, held: bytes) -> None:
    """`_finish` of a stream that ended short of its finish: the held read, then its error (`done` raises)."""
    await sink.write(held)
    await _finish(events, sink, guard, b"")


# How a stream a guard ended is logged, when not as a timeout.
_EXPIRY_OUTCOMES = {Expiry.SHUTDOWN: Outcome.SHUTDOWN, Expiry.KEY_REVOKED: Outcome.REJECTED}


def _expiry_error(expiry: Expiry, shutdown_retry_ms: int | None) -> tuple[GatewayError, int | None]:
    if expiry is Expiry.KEY_REVOKED:
        return KeyRevokedError(), None
    if expiry is Expiry.SHUTDOWN:
        error: GatewayError = ServiceUnavailableError(
            "Sluice is shutting down; retry the request.", code="server_shutting_down"
        )
        return error, shutdown_retry_ms
    messages = {
        Expiry.FIRST_TOKEN: "The upstream sent no token in time.",
        Expiry.IDLE: "The upstream went silent mid-stream.",
        Expiry.TOTAL: "The stream exceeded its total time limit.",
    }
    return UpstreamTimeoutError(messages.get(expiry, "The stream timed out."), code=str(expiry)), None


async def _write_final(sink: Sink, data: bytes, limit: float) -> None:
    """Write the last event; a client that has gone or stalled is not waited for."""
    try:
        async with asyncio.timeout(limit):
            await sink.write(data)
    except (ConnectionResetError, aiohttp.ClientConnectionResetError, TimeoutError):
        # Only what a gone or stalled client raises: a RuntimeError is a bug (the store sink's
        # framing check raises one) and must not pass for a client that left.
        pass
