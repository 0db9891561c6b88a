"""One detached generation: the upstream's reply relayed into the stream store instead of a socket.

It reuses the attached path's pieces: the upstream client, the native dialect's events, the relay
with its guard (first-token, idle and total deadlines, shutdown) and its explicit final event.
Only the sink differs: events go to the store, where any number of readers, one after another or
side by side, pick them up. Besides the relay's endings, a generation can be stopped on purpose,
by its client (`DELETE`), because nobody read it for the grace period, or because a reload revoked
the gateway key that started it (`key_revoked`); that too ends the stream with a final `failed`
event, so a reader never sees it stop without a word.

Before each upstream read a generation is held back (it reads no more, so the upstream's TCP
window fills and the upstream waits) while its readers are far behind (backlog.py), or while the
store has no room for it: it holds its byte budget and the stream's key at least its share
(memory.py). The store accepts every write at once, so this is where memory is bounded.

Time to first token and usage are logged (`browser_stream_finished`) and counted in the metrics
once per generation, measured up to the store: readers may come later or more than once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import structlog

from ..access import RequestRecord
from ..chunks import Chunk
from ..dialects import NativeDialect
from ..errors import GatewayError
from ..guard import Deadlines, Outcome, StreamGuard
from ..lifecycle import Lifecycle
from ..metrics import Metrics
from ..relay import relay
from ..settings import Settings
from ..timers import Timers
from ..upstreams.attempts import Upstream
from ..upstreams.continuation import ContinuedStream, token_limit, within
from ..upstreams.stream import UpstreamStream
from .backlog import Backlog
from .store import StoredEvent, StreamStore

if TYPE_CHECKING:
    from ..auth.gate import Lease

log = structlog.get_logger("sluice.streams")


class StopReason(StrEnum):
    """Why a generation was stopped before it ended by itself (the final event's code)."""

    CANCELLED = "stream_cancelled"
    ABANDONED = "stream_abandoned"
    KEY_REVOKED = "key_revoked"


class StreamStoppedError(GatewayError):
    """The body of the final event of a stopped stream; never an HTTP answer."""

    type = "stream_stopped"


_STOP_MESSAGES = {
    StopReason.CANCELLED: "The stream was stopped by its client.",
    StopReason.ABANDONED: "No client read the stream for too long, so it was stopped.",
    StopReason.KEY_REVOKED: "The gateway key that started the stream was revoked or rotated, so it was stopped.",
}


@dataclass(frozen=True, slots=True)
class Services:
    """What every generation of an application uses."""

    upstream: Upstream
    store: StreamStore
    lifecycle: Lifecycle
    metrics: Metrics
    settings: Settings
    timers: Timers


@dataclass(frozen=True, slots=True)
class Job:
    """What to generate: the upstream body, and the request that asked for it."""

    stream_id: str
    request_id: str
    route: str
    model: str
    body: dict[str, Any]
    # What the starting request took from its gateway key's limits, given back when the stream ends.
    lease: Lease | None = None
    # Which models the starting request's gateway key may be answered by, for the fallbacks; None without keys.
    allows: Callable[[str], bool] | None = None
    # Gives the starting request's body bytes back to the process's budget (body_budget.py) once
    # the stream's task is done: the prompt is held for retries and continuations until then.
    give_back_body: Callable[[], None] | None = None


class StoreSink:
    """The relay's sink: each event it writes is stored under its own sequence number.

    The relay may write several events at once (chunks that arrived in one read); each native
    event ends with a blank line and nothing inside one contains one (its data is a JSON line),
    so the write splits exactly. Events are numbered as the dialect numbered them: one each, in order.
    """

    def __init__(
        self, store: StreamStore, stream_id: str, dialect: NativeDialect, backlog: Backlog | None = None
    ) -> None:
        self._store = store
        self._stream_id = stream_id
        self._dialect = dialect
        self._backlog = backlog
        self._seq = 0

    async def write(self, data: bytes) -> None:
        for event in data.split(b"\n\n")[:-1]:
            self._seq += 1
            await self._store.append(self._stream_id, StoredEvent(self._seq, event + b"\n\n"))
            if self._backlog is not None:
                self._backlog.stored(self._seq, len(event) + 2)
        if self._seq != self._dialect.seq:
            raise RuntimeError(f"stored {self._seq} events of {self._dialect.seq}: the framing broke")


class HoldReason(StrEnum):
    """Why a generation stopped reading its upstream for a while (`browser_stream_held_back`)."""

    UNREAD = "unread"  # its readers are far behind (backlog.py)
    KEPT_BYTES = "kept_bytes"  # the store holds its byte budget, the stream's key its share (memory.py)


class UpstreamChunks:
    """The upstream's chunk batches, opened on first iteration so the relay handles an open failure too.

    With `continued`, a cut after tokens is continued by assistant prefill (upstreams/continuation.py),
    as on the attached path. Between reads it holds back while `backlog` is full or `store` has no
    room for the stream.
    """

    def __init__(
        self,
        upstream: Upstream,
        job: Job,
        record: RequestRecord,
        backlog: Backlog,
        store: StreamStore,
        dialect: NativeDialect,
        continued: Continuing | None = None,
    ) -> None:
        self.held_back = 0  # times the upstream was held back
        self._said: set[HoldReason] = set()  # the reasons logged already
        self._store = store
        self._upstream = upstream
        self._job = job
        self._record = record
        self._dialect = dialect
        self._backlog = backlog
        self._continuing = continued
        self._stream: UpstreamStream | None = None
        self._continued: ContinuedStream | None = None

    async def __aiter__(self) -> AsyncIterator[list[Chunk]]:
        job = self._job
        self._stream = await self._upstream.open_stream(job.body, job.request_id, self._record, allows=job.allows)
        # The `done` event names what answered, after retries and fallbacks, as on /chat/stream.
        served = self._record.extra.get("served_model", job.model)
        self._dialect.answered_by(str(served), self._stream.upstream)
        source: AsyncIterable[Sequence[Chunk]] = self._stream
        if self._continuing is not None:
            source = self._continued = self._continuing(self._stream)
        backlog = self._backlog
        async for batch in source:
            chunks = list(batch)
            while chunks:
                # One read can carry more events than there is room for (an upstream that ran
                # ahead while held back): handed on a piece at a time, so none is dropped unread.
                room = backlog.room_events
                piece, chunks = chunks[:room], chunks[room:]
                yield piece
                # The relay stored the piece; read no more while readers are that far behind,
                # or while the store has no room for more of this stream.
                if backlog.full or not self._has_room():
                    await self._hold_back()

    def _has_room(self) -> bool:
        return self._store.has_room(self._job.stream_id)

    async def _hold_back(self) -> None:
        """Wait until the backlog and the store both have room; counted once, logged once per reason."""
        self.held_back += 1
        backlog, store = self._backlog, self._store
        while True:
            if backlog.full:
                reason = HoldReason.UNREAD
            elif not self._has_room():
                reason = HoldReason.KEPT_BYTES
            else:
                return
            if reason not in self._said:
                self._said.add(reason)
                log.info(
                    "browser_stream_held_back",
                    reason=reason,
                    unread_bytes=backlog.unread_bytes,
                    unread_events=backlog.unread_events,
                    kept_bytes=store.kept_bytes,
                )
            if reason is HoldReason.UNREAD:
                await backlog.wait_for_room()
            else:
                await store.wait_for_room(self._job.stream_id)

    @property
    def malformed(self) -> int:
        """Upstream events dropped because they were not JSON objects."""
        return self._stream.malformed if self._stream is not None else 0

    def close(self) -> None:
        """Close the upstream request, if it was opened, and its continuations; an unfinished one is cancelled."""
        if self._stream is not None:
            self._stream.close()
        if self._continued is not None:
            self._continued.close()


Continuing = Callable[[UpstreamStream], ContinuedStream]


def continuing(services: Services, job: Job, record: RequestRecord) -> Continuing | None:
    """How a cut stream of `job` is continued, or None when no upstream of its model can."""
    if not services.upstream.continues(job.model):
        return None
    metrics = services.metrics

    def on_result(result: str) -> None:
        metrics.child(metrics.continuations, result).inc()
        record.extra["continuation"] = result

    idle = services.settings.upstream.idle_timeout
    limit = token_limit(job.body)

    def continued(stream: UpstreamStream) -> ContinuedStream:
        async def resume(text: str) -> UpstreamStream:
            model = str(record.extra.get("served_model") or job.model)
            # What is left of the client's max_tokens: the parts together keep it (continuation.py).
            body = {**within(job.body, parts.tokens_left), "model": model}
            return await services.upstream.open_continuation(body, text, job.request_id, record, allows=job.allows)

        parts = ContinuedStream(stream, resume, on_result, idle_timeout=idle, limit=limit)
        return parts

    return continued


class Generation:
    """One detached stream's work, run as a task the registry owns."""

    def __init__(self, job: Job, services: Services) -> None:
        self.job = job
        self._services = services
        self._started = asyncio.get_running_loop().time()
        self._guard: StreamGuard | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop_reason: StopReason | None = None
        self._shutdown_requested = False
        self._relaying = True
        browser = services.settings.browser
        self.backlog = Backlog(browser.max_buffered_bytes, max_events=max(1, browser.max_buffered_events // 2))
        if job.lease is not None:
            job.lease.end_with(self._key_revoked)

    def _key_revoked(self) -> None:
        self.stop(StopReason.KEY_REVOKED)

    def stop(self, reason: StopReason) -> None:
        """End the generation now with a final `failed` event naming `reason`."""
        if self._stop_reason is not None or not self._relaying:
            return
        self._stop_reason = reason
        if self._task is not None:
            self._task.cancel(f"stream stopped: {reason}")

    def shutdown(self) -> None:
        """End the generation now with the shutdown event and its retry hint."""
        self._shutdown_requested = True
        if self._guard is not None and self._relaying:
            self._guard.shutdown()

    async def run(self) -> None:
        """Relay the upstream's reply into the store, end it with a final event, and log it."""
        self._task = asyncio.current_task()
        services = self._services
        record = RequestRecord(started=self._started, route=self.job.route, model=self.job.model, stream=True)
        dialect = NativeDialect(self.job.stream_id, services.settings.stream.retry_ms)
        continued = continuing(services, self.job, record)
        self._guard = guard = StreamGuard(
            # `send` never trips: the store accepts at once.
            Deadlines.for_stream(services.settings, continued=continued is not None),
            timers=services.timers,
        )
        chunks = UpstreamChunks(services.upstream, self.job, record, self.backlog, services.store, dialect, continued)
        sink = StoreSink(services.store, self.job.stream_id, dialect, self.backlog)
        # A stop or shutdown asked for before this task ran takes effect at its first await.
        if self._stop_reason is not None and self._task is not None:
            self._task.cancel()
        if self._shutdown_requested:
            guard.shutdown()
        with services.lifecycle.track(guard):
            try:
                await self._relay(chunks, dialect, sink, guard, record)
            except Exception:
                # The task's boundary: nothing above it would tell the readers, so end the stream here.
                log.exception("browser_stream_crashed", stream_id=self.job.stream_id)
                record.outcome, record.error_code = Outcome.UPSTREAM_ERROR, "internal_error"
                with contextlib.suppress(Exception):
                    await sink.write(dialect.failure(GatewayError("Sluice failed while streaming.")))
            finally:
                self._relaying = False
                guard.close()
                chunks.close()
                record.malformed_chunks = chunks.malformed
                record.extra["held_back"] = chunks.held_back
                await services.store.finish(self.job.stream_id)
                if self.job.lease is not None:
                    await self.job.lease.release(record.usage, record.chunks_relayed)
                self._finished(record, dialect)

    async def _relay(
        self,
        chunks: UpstreamChunks,
        dialect: NativeDialect,
        sink: StoreSink,
        guard: StreamGuard,
        record: RequestRecord,
    ) -> None:
        services, settings = self._services, self._services.settings
        try:
            await relay(
                chunks,
                dialect,
                sink,
                guard,
                record,
                final_write_timeout=settings.stream.send_timeout,
                shutdown_retry_ms=settings.server.retry_after * 1000,
                gaps=services.metrics.gaps(record.route),
            )
        except asyncio.CancelledError:
            reason = self._stop_reason
            if reason is None or self._task is None:
                record.outcome = Outcome.SHUTDOWN  # the application is closing: nobody is left to tell
                raise
            self._task.uncancel()
            chunks.close()  # close the upstream before anything else is awaited
            if record.outcome is Outcome.CLIENT_DISCONNECTED:  # else the relay already wrote a final event
                record.error_code = str(reason)
                if reason is StopReason.KEY_REVOKED:  # refused by the gateway, as an attached stream (relay.py)
                    record.outcome = Outcome.REJECTED
                await sink.write(dialect.failure(StreamStoppedError(_STOP_MESSAGES[reason], code=str(reason))))

    def _finished(self, record: RequestRecord, dialect: NativeDialect) -> None:
        loop = asyncio.get_running_loop()
        duration = loop.time() - self._started
        usage = record.usage_for_log()
        # Failed on the upstream's side (cut, error event, stall): the operator's business.
        failed = record.outcome is Outcome.UPSTREAM_ERROR or record.outcome is Outcome.TIMEOUT
        (log.warning if failed else log.info)(
            "browser_stream_finished",
            stream_id=self.job.stream_id,
            key=self.job.lease.key.name if self.job.lease is not None else None,
            model=record.model,
            outcome=record.outcome,
            error_code=record.error_code,
            finish_reason=record.finish_reason,
            ttft_ms=record.ttft_ms(),
            tokens=(usage or {}).get("completion_tokens", 0),
            usage=usage,
            events=dialect.seq,
            malformed_chunks=record.malformed_chunks,
            held_back=record.extra.get("held_back", 0),
            continuation=record.extra.get("continuation"),
            duration_ms=round(duration * 1000, 2),
            # As on the access line: the routing's attempts, and who answered.
            attempts=record.attempts or None,
            upstream=record.extra.get("upstream"),
            served_model=record.extra.get("served_model"),
            upstream_ending=record.extra.get("upstream_ending"),
        )
        # Whatever happened, readers got it as an event on a 200 stream.
        self._services.metrics.chat_finished(record, duration, 200)
