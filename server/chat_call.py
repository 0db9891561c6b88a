"""Serve one chat call against the upstream: admit it, guard it, stream (via the relay) or complete it.

Before the response starts, every failure is raised as a GatewayError (the middleware's errors
step renders it with its status); once it has started, the relay ends the stream with an event.
A stream's routing runs in the handler's task; its response starts after it, or beside it once an
upstream answered 200 without its first token or after one heartbeat interval of routing
(retries, Retry-After waits), whichever comes first (stream_start.py): from then on heartbeat
comments keep the client and its proxies from timing out, and the routing goes on behind them
until the first token. A failure the routing cannot rescue is then the stream's final error event.
The upstream request is tied to the client's connection: when the client leaves, aiohttp
cancels the handler (`handler_cancellation=True`) and the `finally` here closes the upstream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import orjson
from aiohttp import web

from .access import RequestRecord
from .chunks import Chunk
from .dialects import Dialect
from .errors import GatewayError, KeyRevokedError, UpstreamError, UpstreamTimeoutError
from .guard import Deadlines, Expiry, Outcome, StreamGuard
from .keys import GATEWAY_KEY, LIFECYCLE, METRICS, RECORD, REQUEST_ID, SETTINGS, TIMERS, UPSTREAM
from .lifecycle import Lifecycle
from .metrics import Metrics
from .middleware.auth import end_if_revoked, reserve_tokens
from .relay import relay
from .settings import Settings
from .sse import SSEResponse
from .stream_start import ResponseStart
from .timers import Timers
from .upstreams.continuation import ContinuedStream, token_limit, within
from .upstreams.stream import UpstreamStream
from .validation import requested_choices

T = TypeVar("T")


def deadlines_for(request: web.Request, *, stream: bool, continued: bool = False) -> Deadlines:
    """The configured deadlines; a non-streaming call has only its total time.

    `continued`: the stream may be continued after a cut (continuation.py), which then watches the
    idle gap between any two chunks itself; the guard's idle deadline is wider by one attempt's
    header and first-token time, which only a continuation being opened can use.
    """
    return _deadlines(request.app[SETTINGS], stream=stream, continued=continued)


def _deadlines(settings: Settings, *, stream: bool, continued: bool = False) -> Deadlines:
    """`deadlines_for` from the settings (a stream's call has them at hand)."""
    up = settings.upstream
    if not stream:
        return Deadlines(
            first_token=up.total_timeout, idle=up.total_timeout, total=up.total_timeout, send=up.total_timeout
        )
    return Deadlines.for_stream(settings, continued=continued)


async def stream_chat(request: web.Request, body: dict[str, Any], dialect: Dialect) -> web.StreamResponse:
    """Open an upstream stream for `body` and relay it to the client in `dialect`."""
    app = request.app
    settings, lifecycle, metrics, timers = app[SETTINGS], app[LIFECYCLE], app[METRICS], app[TIMERS]
    record = request[RECORD]
    record.stream = True
    lifecycle.admit()
    if record.key is not None:  # only a request with a gateway key holds a lease to reserve from
        await reserve_tokens(request, body)
    upstream = app[UPSTREAM]
    continues = upstream.continues(str(body.get("model")))
    guard = StreamGuard(_deadlines(settings, stream=True, continued=continues), timers=timers)
    if record.key is not None:  # set only with the request's gateway key: no lookups without keys
        end_if_revoked(request, guard)
    preamble = dialect.start()
    opened: UpstreamStream | None = None
    continued: ContinuedStream | None = None
    with lifecycle.track(guard):
        # Its timer runs from here: the `finally` below stops it.
        start = ResponseStart(
            request,
            record,
            guard,
            lambda: _sse_response(settings, metrics, timers, record, guard, preamble),
            settings.stream.heartbeat_interval,
        )
        try:
            chunks: AsyncIterable[Sequence[Chunk]]
            try:
                # In this task: see stream_start.py for the response that starts beside a long routing.
                allows = _models_allowed(request, record)
                opened = await upstream.open_stream(body, request[REQUEST_ID], record, start.soon, allows)
            except (asyncio.CancelledError, GatewayError) as failure:
                start.routed()
                if not start.begun or (isinstance(failure, asyncio.CancelledError) and guard.expired is None):
                    mapped = _before_start(failure, guard, record, lifecycle)
                    try:
                        if mapped is failure:
                            raise
                        raise mapped from None
                    finally:
                        del mapped  # see _guarded
                chunks = _Failing(failure)  # the response started: the relay ends it with this failure
            else:
                start.routed()
                dialect.answered_by(str(record.extra.get("served_model", body.get("model"))), opened.upstream)
                chunks = opened
            if continues:
                chunks = continued = _continued(request, body, chunks)
            response = await start.response()
            await relay(
                chunks,
                dialect,
                response,
                guard,
                record,
                final_write_timeout=settings.stream.send_timeout,
                shutdown_retry_ms=settings.server.retry_after * 1000,
                gaps=metrics.gaps(record.route),
                choices=requested_choices(body),
            )
            if not response.finished:  # `write_last` ended it: no coroutine to learn that
                await response.finish()
            return response
        except asyncio.CancelledError:
            if record.outcome is Outcome.CLIENT_DISCONNECTED:
                # Its upstream is closed first (again, if the client-gone hook did), then the rest
                # waits its turn: see Lifecycle.after_leaving.
                _close_upstream(opened, continued)
                await lifecycle.after_leaving()
            raise
        finally:
            guard.close()
            start.close()
            if (started := start.started()) is not None:
                started.stop_heartbeat()
            if opened is not None:
                record.malformed_chunks = opened.malformed
                if opened.cut_after_finish:  # whole, but its upstream cut the connection before `[DONE]`
                    record.extra["upstream_ending"] = "cut_after_finish"
            _close_upstream(opened, continued)


def _close_upstream(opened: UpstreamStream | None, continued: ContinuedStream | None) -> None:
    """Close the upstream request, and its continuation if any (both idempotent)."""
    if opened is not None:
        opened.close()
    if continued is not None:
        continued.close()


def _continued(request: web.Request, body: dict[str, Any], chunks: AsyncIterable[Sequence[Chunk]]) -> ContinuedStream:
    """`chunks`, continued by assistant prefill after a mid-stream cut (see upstreams/continuation.py)."""
    app, record = request.app, request[RECORD]
    metrics = app[METRICS]

    async def resume(text: str) -> UpstreamStream:
        model = str(record.extra.get("served_model") or body.get("model"))
        # `stream` is bound below, before any chunk is read: it runs this only after a cut.
        continued = {**within(body, stream.tokens_left), "model": model}
        return await app[UPSTREAM].open_continuation(
            continued, text, request[REQUEST_ID], record, _models_allowed(request, record)
        )

    def on_result(result: str) -> None:
        metrics.child(metrics.continuations, result).inc()
        record.extra["continuation"] = result

    stream = ContinuedStream(
        chunks,
        resume,
        on_result,
        idle_timeout=app[SETTINGS].upstream.idle_timeout,
        choices=requested_choices(body),
        limit=token_limit(body),
    )
    return stream


class _Failing:
    """The stream of a routing that failed after the response started: the relay ends it with the failure."""

    def __init__(self, failure: BaseException) -> None:
        self._failure: BaseException | None = failure

    def __aiter__(self) -> _Failing:
        return self

    async def __anext__(self) -> list[Chunk]:
        try:
            raise self._failure or StopAsyncIteration()
        finally:
            self._failure = None  # raised once; kept, it would hold itself (see _guarded)


async def complete_chat(request: web.Request, body: dict[str, Any]) -> bytes:
    """Run a non-streaming chat; the client leaving cancels the upstream call with the handler."""
    app = request.app
    lifecycle = app[LIFECYCLE]
    record = request[RECORD]
    record.stream = False
    lifecycle.admit()
    await reserve_tokens(request, body)
    guard = StreamGuard(deadlines_for(request, stream=False), timers=app[TIMERS])
    if record.key is not None:
        end_if_revoked(request, guard)
    with lifecycle.track(guard):
        try:
            allows = _models_allowed(request, record)
            completion = app[UPSTREAM].complete(body, request[REQUEST_ID], record, allows)
            content: bytes = await _guarded(completion, guard, record, lifecycle)
        finally:
            guard.close()
    record.outcome = Outcome.COMPLETED
    _note_usage(content, record)
    return content


def _models_allowed(request: web.Request, record: RequestRecord) -> Callable[[str], bool] | None:
    """Which models the request's gateway key may use, for its fallbacks; None without keys.

    `record.key` is set only with the request's key: without keys, no lookup (which would raise
    and catch a KeyError) on every request.
    """
    key = request.get(GATEWAY_KEY) if record.key is not None else None
    return key.fallbacks_allowed(request.app[SETTINGS].models.aliases) if key is not None else None


def _note_usage(content: bytes, record: RequestRecord) -> None:
    """Copy usage and finish reason from a chat.completion into the record, for logs and metrics."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return
    if isinstance(body, dict):
        usage = body.get("usage")
        record.usage = usage if isinstance(usage, dict) else None
        choices = body.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            reason = choices[0].get("finish_reason")
            record.finish_reason = reason if isinstance(reason, str) else None


async def _guarded(awaitable: Awaitable[T], guard: StreamGuard, record: RequestRecord, lifecycle: Lifecycle) -> T:
    """Await an upstream call before the response starts; map a guard's expiry to a status."""
    try:
        return await awaitable
    except (asyncio.CancelledError, GatewayError) as failure:
        mapped = _before_start(failure, guard, record, lifecycle)
        try:
            if mapped is failure:
                raise
            raise mapped from None
        finally:
            # The error's traceback holds this frame: a local naming the error would keep the two,
            # and the whole request with them, for the collector. (`failure` Python deletes itself.)
            del mapped


def _before_start(
    failure: BaseException, guard: StreamGuard, record: RequestRecord, lifecycle: Lifecycle
) -> BaseException:
    """What a failure before the response started is raised as: a status, or the cancellation itself.

    A drain that ended the request answers as the drain answers new ones: 503 with Retry-After;
    a key revoked meanwhile as a revoked key's request: 401 key_revoked.
    """
    if isinstance(failure, asyncio.CancelledError):
        expiry = guard.consume_expiry()
        if expiry is None:
            record.outcome = Outcome.CLIENT_DISCONNECTED
            return failure
        if expiry is Expiry.SHUTDOWN:
            record.outcome = Outcome.SHUTDOWN
            return lifecycle.shutting_down()
        if expiry is Expiry.KEY_REVOKED:
            record.outcome = Outcome.REJECTED
            return KeyRevokedError()
        record.outcome = Outcome.TIMEOUT
        return UpstreamTimeoutError("The upstream did not answer in time.", code=str(expiry))
    if isinstance(failure, UpstreamError):
        record.outcome = Outcome.TIMEOUT if isinstance(failure, UpstreamTimeoutError) else Outcome.UPSTREAM_ERROR
        record.error_code = failure.code
    else:
        record.outcome = Outcome.REJECTED
    return failure


def _sse_response(
    settings: Settings, metrics: Metrics, timers: Timers, record: RequestRecord, guard: StreamGuard, preamble: bytes
) -> SSEResponse:
    """The stream's response; `preamble` (the dialect's start) leaves with its first write."""

    def on_heartbeat() -> None:
        record.heartbeats += 1
        metrics.heartbeats.inc()

    return SSEResponse(
        heartbeat_interval=settings.stream.heartbeat_interval,
        send_timeout=settings.stream.send_timeout,
        on_heartbeat=on_heartbeat,
        on_stalled=guard.stalled,
        preamble=preamble,
        timers=timers,
    )
