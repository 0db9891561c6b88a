"""Serve one chat call against the upstream: admit it, guard it, stream (via the relay) or complete it.

Before the response starts, every failure is raised as a GatewayError (the error middleware
renders it with its status); once it has started, the relay ends the stream with an event.
A stream's response starts once an upstream answered 200, or after one heartbeat interval of
routing (retries, Retry-After waits), whichever comes first: from then on heartbeat comments keep
the client and its proxies from timing out, and the routing goes on behind them until the first
token. A failure the routing cannot rescue is then the stream's final error event.
The upstream request is tied to the client's connection: when the client leaves, aiohttp
cancels the handler (`handler_cancellation=True`) and the `finally` here closes the upstream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import orjson
from aiohttp import web

from .access import RequestRecord
from .chunks import Chunk
from .dialects import Dialect
from .errors import GatewayError, ServiceUnavailableError, UpstreamError, UpstreamTimeoutError
from .guard import Deadlines, Expiry, Outcome, StreamGuard
from .keys import LIFECYCLE, METRICS, RECORD, REQUEST_ID, SETTINGS, UPSTREAM
from .middleware.auth import reserve_tokens
from .relay import relay
from .sse import SSEResponse
from .upstreams.continuation import ContinuedStream
from .upstreams.stream import UpstreamStream

T = TypeVar("T")


def deadlines_for(request: web.Request, *, stream: bool, continued: bool = False) -> Deadlines:
    """The configured deadlines; a non-streaming call has only its total time.

    `continued`: the stream may be continued after a cut (continuation.py), which then watches the
    idle gap itself; the guard's idle deadline leaves room for the continuation's opening too.
    """
    settings = request.app[SETTINGS]
    up = settings.upstream
    if not stream:
        return Deadlines(
            first_token=up.total_timeout, idle=up.total_timeout, total=up.total_timeout, send=up.total_timeout
        )
    # The routing enforces header_timeout and first_token_timeout per attempt, so the guard's own
    # first-token deadline only bounds the whole routing (attempts, waits, fallbacks, hedges).
    idle = up.idle_timeout + (up.header_timeout + up.first_token_timeout if continued else 0)
    return Deadlines(
        first_token=up.total_timeout,
        idle=idle,
        total=up.total_timeout,
        send=settings.stream.send_timeout,
    )


async def stream_chat(request: web.Request, body: dict[str, Any], dialect: Dialect) -> web.StreamResponse:
    """Open an upstream stream for `body` and relay it to the client in `dialect`."""
    app = request.app
    settings, lifecycle, metrics = app[SETTINGS], app[LIFECYCLE], app[METRICS]
    record = request[RECORD]
    record.stream = True
    lifecycle.admit()
    await reserve_tokens(request, body)
    upstream = app[UPSTREAM]
    continues = upstream.continues(str(body.get("model")))
    guard = StreamGuard(deadlines_for(request, stream=True, continued=continues))
    started = asyncio.get_running_loop().create_future()
    opening = asyncio.ensure_future(upstream.open_stream(body, request[REQUEST_ID], record, lambda: _settle(started)))
    continued: ContinuedStream | None = None
    response: SSEResponse | None = None
    with lifecycle.track(guard), metrics.live_streams.track_inprogress():
        try:
            await _until_started(opening, started, settings.stream.heartbeat_interval)
            chunks: AsyncIterable[Sequence[Chunk]]

            def on_open(stream: UpstreamStream) -> None:
                dialect.answered_by(str(record.extra.get("served_model", body.get("model"))), stream.upstream)

            if opening.done():
                opened = await _guarded(opening, guard, record)
                on_open(opened)
                chunks = opened
            else:
                chunks = _AwaitedStream(opening, on_open)  # the relay reports a routing failure as an event
            if continues:
                chunks = continued = _continued(request, body, chunks)
            response = _sse_response(request, guard, dialect.start())
            await _prepare(response, request)
            record.response_status = response.status
            guard.set_send_timeout_callback(response.abort)
            await relay(
                chunks,
                dialect,
                response,
                guard,
                record,
                final_write_timeout=settings.stream.send_timeout,
                shutdown_retry_ms=settings.server.retry_after * 1000,
                gaps=metrics.child(metrics.chunk_gap, record.route),
                choices=_choices(body),
            )
            await response.finish()
            return response
        finally:
            guard.close()
            record.malformed_chunks = _malformed(opening)
            if response is not None:
                response.stop_heartbeat()
            _close_opened(opening)
            if continued is not None:
                continued.close()


async def _until_started(opening: asyncio.Future[UpstreamStream], started: asyncio.Future[None], limit: float) -> None:
    """Wait until the routing ended, an upstream accepted the request (`started`), or `limit` seconds passed.

    One future settled by whichever comes first: no waiter task and no `asyncio.wait` per stream.
    """
    if opening.done():
        return

    def on_opened(_: object) -> None:
        _settle(started)

    timer = asyncio.get_running_loop().call_later(limit, _settle, started)
    opening.add_done_callback(on_opened)
    try:
        await started
    finally:
        timer.cancel()
        opening.remove_done_callback(on_opened)


def _settle(started: asyncio.Future[None]) -> None:
    """Mark the stream's routing as far enough along to start the response (once; later calls are no-ops)."""
    if not started.done():
        started.set_result(None)


def _continued(request: web.Request, body: dict[str, Any], chunks: AsyncIterable[Sequence[Chunk]]) -> ContinuedStream:
    """`chunks`, continued by assistant prefill after a mid-stream cut (see upstreams/continuation.py)."""
    app, record = request.app, request[RECORD]
    metrics = app[METRICS]

    async def resume(text: str) -> UpstreamStream:
        model = str(record.extra.get("served_model") or body.get("model"))
        return await app[UPSTREAM].open_continuation({**body, "model": model}, text, request[REQUEST_ID], record)

    def on_result(result: str) -> None:
        metrics.child(metrics.continuations, result).inc()
        record.extra["continuation"] = result

    return ContinuedStream(chunks, resume, on_result, idle_timeout=app[SETTINGS].upstream.idle_timeout)


class _AwaitedStream:
    """The batches of a stream the routing is still opening."""

    def __init__(self, opening: asyncio.Future[UpstreamStream], on_open: Callable[[UpstreamStream], None]) -> None:
        self._opening = opening
        self._on_open = on_open

    async def __aiter__(self) -> AsyncIterator[list[Chunk]]:
        stream = await self._opening
        self._on_open(stream)
        async for batch in stream:
            yield batch


def _malformed(opening: asyncio.Future[UpstreamStream]) -> int:
    """Upstream events the opened stream dropped as malformed (0 when none was opened)."""
    if opening.done() and not opening.cancelled() and opening.exception() is None:
        return opening.result().malformed
    return 0


def _close_opened(opening: asyncio.Future[UpstreamStream]) -> None:
    """Stop the routing if it still runs; close the stream it opened, if it opened one."""
    if not opening.done():
        opening.cancel()
    elif not opening.cancelled() and opening.exception() is None:
        opening.result().close()


async def complete_chat(request: web.Request, body: dict[str, Any]) -> bytes:
    """Run a non-streaming chat; the client leaving cancels the upstream call with the handler."""
    app = request.app
    lifecycle = app[LIFECYCLE]
    record = request[RECORD]
    record.stream = False
    lifecycle.admit()
    await reserve_tokens(request, body)
    guard = StreamGuard(deadlines_for(request, stream=False))
    with lifecycle.track(guard), app[METRICS].live_streams.track_inprogress():
        try:
            content: bytes = await _guarded(app[UPSTREAM].complete(body, request[REQUEST_ID], record), guard, record)
        finally:
            guard.close()
    record.outcome = Outcome.COMPLETED
    _note_usage(content, record)
    return content


def _choices(body: dict[str, Any]) -> int:
    """The request's `n`: how many choices must finish (validated at the edge; 1 when absent)."""
    n = body.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1


async def _prepare(response: SSEResponse, request: web.Request) -> None:
    """Send the headers; a client gone by now ends the handler as any disconnect does."""
    try:
        await response.prepare(request)
    except ConnectionResetError:  # aiohttp's ClientConnectionResetError is one
        # The peer's reset reached the transport before aiohttp cancelled the handler.
        request[RECORD].outcome = Outcome.CLIENT_DISCONNECTED
        raise asyncio.CancelledError from None


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


async def _guarded(awaitable: Awaitable[T], guard: StreamGuard, record: RequestRecord) -> T:
    """Await an upstream call before the response starts; map a guard's expiry to a status."""
    try:
        return await awaitable
    except asyncio.CancelledError:
        expiry = guard.consume_expiry()
        if expiry is None:
            record.outcome = Outcome.CLIENT_DISCONNECTED
            raise
        if expiry is Expiry.SHUTDOWN:
            record.outcome = Outcome.SHUTDOWN
            raise ServiceUnavailableError(
                "Sluice is shutting down; retry the request.", code="server_shutting_down"
            ) from None
        record.outcome = Outcome.TIMEOUT
        raise UpstreamTimeoutError("The upstream did not answer in time.", code=str(expiry)) from None
    except UpstreamError as error:
        record.outcome = Outcome.TIMEOUT if isinstance(error, UpstreamTimeoutError) else Outcome.UPSTREAM_ERROR
        record.error_code = error.code
        raise
    except GatewayError:
        record.outcome = Outcome.REJECTED
        raise


def _sse_response(request: web.Request, guard: StreamGuard, preamble: bytes) -> SSEResponse:
    """The stream's response; `preamble` (the dialect's start) leaves with its first write."""
    settings = request.app[SETTINGS]
    metrics = request.app[METRICS]
    record = request[RECORD]

    def on_heartbeat() -> None:
        record.heartbeats += 1
        metrics.heartbeats.inc()

    return SSEResponse(
        heartbeat_interval=settings.stream.heartbeat_interval,
        send_timeout=settings.stream.send_timeout,
        on_heartbeat=on_heartbeat,
        on_stalled=guard.stalled,
        preamble=preamble,
    )
