"""Serve one connection of a detached stream: the stored events after the resume point, then new ones.

Each connection starts with `retry:` and an `id:` naming its resume point (`<stream>:0` on a
first connection), so a browser that loses the connection before the first event still
reconnects to this stream. It ends after the stream's final event. A stream with nothing left
to send (unknown, expired, or finished before the resume point) is HTTP 204, which tells
EventSource to stop reconnecting. With Redis away the store cannot say: the connection is held
(`serve_stream`), and learns once Redis answers.

A draining process ends its readers too (lifecycle.py), whether the stream is generated here or
on another instance (which goes on after this one exits): a reader sends what the store already
holds, then a `failed` event `server_shutting_down` with the drain's `retry:` and no id, so the
reconnect names the last event it got and resumes elsewhere.

A HEAD (`stream_head`) gets the status and headers the GET would start with, and no body (with
Redis away, 503: a HEAD is not held). It only looks at the store: it is no reader, so it neither
holds off the grace period nor marks events read, and a shared store does not report it to the
stream's producer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from types import TracebackType

import aiohttp
import orjson
from aiohttp import web

from ..access import RequestRecord
from ..errors import GatewayError, ServiceUnavailableError
from ..guard import Expiry, Outcome
from ..lifecycle import Lifecycle
from ..metrics import Metrics
from ..settings import StreamSettings
from ..sse import SSEResponse
from ..timers import Timers
from .registry import StreamRegistry
from .resume import event_id
from .store import EventsDroppedError, GenerationLostError, Slice, StoredEvent, StoreUnavailableError

# Events read from the store at once: enough to replay quickly, few enough to stay small.
BATCH = 256
# Most bytes of events joined into one write (one event larger goes alone): a batch of large
# events joined whole sat in the transport of a reader that never reads, a replay's worth each,
# and a thousand such readers of one stream held a thousand copies of it.
WRITE_BYTES = 16 * 1024


class ResumeUnavailableError(GatewayError):
    """410: the events after the resume point were dropped to keep the stream's buffer bounded."""

    status = 410
    type = "invalid_request_error"
    code = "resume_unavailable"


def _dropped() -> ResumeUnavailableError:
    # A plain attach (no Last-Event-ID) can meet this too: its resume point is the stream's start.
    return ResumeUnavailableError("The events after the resume point are no longer kept; start a new stream.")


class DrainEnd:
    """One reader's end by the drain: `shutdown()` asks it to catch up with the store, then end.

    While the reader waits for new events (`with` this), the ask cancels its task, and the block
    swallows that cancellation alone: no task or future per wait, which runs once per event.
    """

    __slots__ = ("_lifecycle", "_task", "_waiting", "asked")

    def __init__(self, lifecycle: Lifecycle) -> None:
        self._lifecycle = lifecycle
        self._task = asyncio.current_task()
        self._waiting = False
        self.asked = False

    def event(self, record: RequestRecord) -> bytes:
        """The drain's last event: built when a drain asks for it, not for every reader."""
        lifecycle = self._lifecycle
        record.outcome = Outcome.SHUTDOWN
        error = lifecycle.shutting_down("Sluice is shutting down; reconnect to go on with the stream.")
        return b"retry: %d\n" % (lifecycle.retry_after * 1000) + _failed(error, record)

    def shutdown(self) -> None:
        if not self.asked:
            self.asked = True
            if self._waiting and self._task is not None:
                self._task.cancel()

    def __enter__(self) -> None:
        self._waiting = True

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> bool:
        self._waiting = False
        # The ask's cancellation, and no other (the client leaving), ends the wait quietly.
        return kind is asyncio.CancelledError and self.asked and self._task is not None and self._task.uncancel() == 0


async def serve_stream(
    request: web.Request,
    registry: StreamRegistry,
    stream_id: str,
    after: int,
    *,
    settings: StreamSettings,
    metrics: Metrics,
    record: RequestRecord,
    timers: Timers,
    lifecycle: Lifecycle,
    may_read: Callable[[], Awaitable[bool | None]] | None = None,
) -> web.StreamResponse:
    """Send the events of `stream_id` after `after` until its final event, or the drain's.

    `may_read`: whether this client may read the stream, asked once Redis answers (None: still away),
    when Redis could not say whose it is; a refusal then ends the response as an unknown stream's.

    With Redis away, the reader is held as an attached one is: the response starts, heartbeats keep
    it while Redis comes back (`redis.outage_seconds`), and it goes on from there. A 503 instead was
    the end of an EventSource's reconnect that landed here while the stream went on elsewhere.
    """
    first: Slice | None = None  # None: read once Redis is back (`_after_outage`)
    if may_read is None:
        try:
            first = await _first(registry, stream_id, after, hold=True)
        except StoreUnavailableError:
            pass
        else:
            if first is None:
                return web.Response(status=204)
    response = _sse_response(
        settings, timers, on_heartbeat=metrics.heartbeats.inc, on_stalled=lambda: _cut(response, record)
    )
    try:
        await response.prepare(request)
    except ConnectionResetError:  # aiohttp's ClientConnectionResetError is one
        # The client left before the headers went (its reset read before aiohttp cancelled the
        # handler): a departure, logged 499, not a 500 with two tracebacks.
        record.outcome = Outcome.CLIENT_DISCONNECTED
        raise asyncio.CancelledError from None
    record.response_status = response.status
    start = f"retry: {settings.retry_ms}\nid: {event_id(stream_id, after)}\n\n"
    try:
        end = DrainEnd(lifecycle)
        with registry.reading(stream_id), lifecycle.reading(end):
            if await _send(response, start.encode(), settings.send_timeout, record):
                if first is None:
                    first = await _after_outage(
                        response, registry, stream_id, after, settings.send_timeout, end, record, may_read
                    )
                if first is not None:
                    await _follow(response, registry, stream_id, after, first, settings.send_timeout, end, record)
    finally:
        response.stop_heartbeat()  # also when the client left and the handler was cancelled
    await response.finish()
    return response


async def stream_head(
    registry: StreamRegistry, stream_id: str, after: int, *, settings: StreamSettings, timers: Timers
) -> web.Response:
    """What `serve_stream` answers before its first byte of body, without one: the answer to a HEAD."""
    if await _first(registry, stream_id, after, look=True) is None:
        return web.Response(status=204)
    # The headers of the response a GET gets, never prepared: no heartbeat, no timer, no socket option.
    return web.Response(status=200, headers=_sse_response(settings, timers).headers)


async def _first(
    registry: StreamRegistry, stream_id: str, after: int, *, look: bool = False, hold: bool = False
) -> Slice | None:
    """The first events after `after`; None when there is nothing to send (the answer is 204).

    With `look`, the store is looked at (`peek`), not read. 410 when the events after `after` were
    dropped, 503 when Redis cannot be reached (StoreUnavailableError itself with `hold`).
    """
    store = registry.store
    try:
        first = await (store.peek(stream_id, after) if look else store.read_after(stream_id, after, BATCH))
    except EventsDroppedError:
        raise _dropped() from None
    except StoreUnavailableError:
        if hold:
            raise
        raise ServiceUnavailableError(
            "Sluice cannot reach Redis to read the stream; retry shortly.",
            code="store_unavailable",
            headers={"Retry-After": str(registry.retry_after)},
        ) from None
    if first is None or (first.finished and not first.events):
        return None
    return first


def _sse_response(
    settings: StreamSettings,
    timers: Timers,
    on_heartbeat: Callable[[], None] | None = None,
    on_stalled: Callable[[], None] | None = None,
) -> SSEResponse:
    return SSEResponse(
        heartbeat_interval=settings.heartbeat_interval,
        send_timeout=settings.send_timeout,
        on_heartbeat=on_heartbeat,
        on_stalled=on_stalled,
        timers=timers,
    )


def _cut(response: SSEResponse, record: RequestRecord) -> None:
    """End a reader whose client took nothing (a write or a heartbeat) for the send timeout.

    Logged as the relay logs a stream cut so. When the heartbeat finds it, the abort cancels the
    reader's wait; its outcome is set first, so the cancellation does not log a client that left.
    """
    record.outcome, record.error_code = Outcome.TIMEOUT, str(Expiry.SEND)
    response.abort()


async def _follow(
    response: SSEResponse,
    registry: StreamRegistry,
    stream_id: str,
    seq: int,
    batch: Slice,
    send_timeout: float,
    end: DrainEnd,
    record: RequestRecord,
) -> None:
    """Write batch after batch, waiting for the generation when caught up, until the final event.

    A `failed` event of the reader's own names its code in the access line (`record.error_code`).

    Once `end` is asked, no more waiting: what the store holds, then the drain's event.
    """
    store = registry.store
    caught_up = False  # a read began after the drain asked: what it found is all there is to send
    while True:
        if batch.events:
            events = batch.events
            if len(events) == 1:  # a live stream's usual batch
                if not await _send(response, events[0].data, send_timeout, record):
                    return
            else:
                for data in _writes(events):
                    if not await _send(response, data, send_timeout, record):
                        return
            seq = events[-1].seq
            # Only what this connection sent: a Last-Event-ID is the client's claim, and one past
            # the end would have told the generation that every event was read (no hold-back).
            registry.sent(stream_id, seq)
        if batch.finished:
            record.outcome = Outcome.COMPLETED  # the stream's own final event sent, whatever it said
            return
        if caught_up and len(batch.events) < BATCH:
            await _send(response, end.event(record), send_timeout)
            return
        try:
            # A short batch was all there was: wait (at once if more came meanwhile), then read.
            if len(batch.events) < BATCH and not end.asked:
                with end:
                    await store.wait(stream_id, seq)
            caught_up = end.asked
            next_batch = await store.read_after(stream_id, seq, BATCH)
        except EventsDroppedError:
            # This reader fell a whole buffer behind. The event has no id, so a reconnect names the
            # last event it did get, and is told 410.
            await _send(response, _failed(_dropped(), record), send_timeout)
            return
        except GenerationLostError:
            await _send(response, _failed(_lost(), record), send_timeout)
            return
        except StoreUnavailableError:
            # Redis went away: heartbeats keep the connection while it comes back, then go on.
            recovered = False
            if not end.asked:
                with end:
                    recovered = await store.recovered()
            if recovered:
                batch = Slice((), finished=False)
                continue
            await _send(response, end.event(record) if end.asked else _failed(_unreachable(), record), send_timeout)
            return
        if next_batch is None:
            # Expired or evicted while being read: said, never a silent end (the reconnect gets 204).
            await _send(response, _failed(_expired(), record), send_timeout)
            return
        batch = next_batch


def _writes(events: tuple[StoredEvent, ...]) -> Iterator[bytes]:
    """`events` joined into writes of at most WRITE_BYTES each: one send for the events a reader
    caught up on at once, and never more than that held for a reader that stopped reading."""
    joined: list[bytes] = []
    size = 0
    for event in events:
        data = event.data
        if joined and size + len(data) > WRITE_BYTES:
            yield b"".join(joined)
            joined, size = [], 0
        joined.append(data)
        size += len(data)
    yield b"".join(joined)


async def _after_outage(
    response: SSEResponse,
    registry: StreamRegistry,
    stream_id: str,
    after: int,
    send_timeout: float,
    end: DrainEnd,
    record: RequestRecord,
    may_read: Callable[[], Awaitable[bool | None]] | None,
) -> Slice | None:
    """The first events once Redis is back; None when the response has nothing more to send.

    Not back within the outage: the `failed` event an attached reader gets. Back, and nothing to
    send (the stream unknown or over): the response ends, and a reconnect learns that (204).
    """
    recovered = False
    if not end.asked:
        with end:
            recovered = await registry.store.recovered()
    if not recovered:
        await _send(response, end.event(record) if end.asked else _failed(_unreachable(), record), send_timeout)
        return None
    if may_read is not None:
        allowed = await may_read()
        if allowed is None:  # away again
            await _send(response, _failed(_unreachable(), record), send_timeout)
            return None
        if not allowed:
            return None  # another key's stream, or none: nothing sent, and the reconnect gets 204
    try:
        first = await registry.store.read_after(stream_id, after, BATCH)
    except EventsDroppedError:
        await _send(response, _failed(_dropped(), record), send_timeout)
        return None
    except GenerationLostError:
        await _send(response, _failed(_lost(), record), send_timeout)
        return None
    except StoreUnavailableError:
        await _send(response, _failed(_unreachable(), record), send_timeout)
        return None
    if first is None or (first.finished and not first.events):
        return None
    return first


def _failed(error: GatewayError, record: RequestRecord) -> bytes:
    """A final `failed` event with no id: a reconnect names the last event it got and learns again."""
    record.error_code = error.code
    return b"event: failed\ndata: " + orjson.dumps(error.body()) + b"\n\n"


def _expired() -> GatewayError:
    return GatewayError(
        "The stream is no longer kept (past its retention, or removed to make room for newer streams); "
        "the rest of it is lost.",
        code="stream_expired",
    )


def _lost() -> GatewayError:
    return GatewayError(
        "The instance generating this stream stopped; the rest of the reply is lost.", code="generation_lost"
    )


def _unreachable() -> GatewayError:
    return ServiceUnavailableError("Sluice lost Redis while streaming; start a new stream.", code="store_unavailable")


async def _send(response: SSEResponse, data: bytes, send_timeout: float, record: RequestRecord | None = None) -> bool:
    """Write events; False when the client has gone or accepted nothing for `send_timeout`.

    With `record`, a False says how the reader ended, as the relay says it of a stream: its client
    left (`client_disconnected`), or took nothing for the timeout (`timeout`, `send_timeout`).
    """
    try:
        if response.send_now(data):
            return True  # below the client's mark: nothing to wait for, so no deadline to arm
        async with asyncio.timeout(send_timeout):
            await response.wait_for_room()
    except TimeoutError:
        if record is not None:
            _cut(response, record)
        else:
            response.abort()
        return False
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        if record is not None:
            record.outcome = Outcome.CLIENT_DISCONNECTED
        return False
    return True
