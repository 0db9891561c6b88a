"""Serve one chat call against the upstream: admit it, guard it, stream (via the relay) or complete it.

Before the response starts, every failure is raised as a GatewayError (the error middleware
renders it with its status); once it has started, the relay ends the stream with an event.
The upstream request is tied to the client's connection: when the client leaves, aiohttp
cancels the handler (`handler_cancellation=True`) and the `finally` here closes the upstream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import orjson
from aiohttp import web

from .access import RequestRecord
from .dialects import Dialect
from .errors import GatewayError, ServiceUnavailableError, UpstreamError, UpstreamTimeoutError
from .guard import Deadlines, Expiry, Outcome, StreamGuard
from .keys import LIFECYCLE, METRICS, RECORD, REQUEST_ID, SETTINGS, UPSTREAM
from .relay import relay
from .sse import SSEResponse
from .upstream import UpstreamStream

T = TypeVar("T")


def deadlines_for(request: web.Request, *, stream: bool) -> Deadlines:
    """The configured deadlines; a non-streaming call has only its total time."""
    settings = request.app[SETTINGS]
    up = settings.upstream
    if not stream:
        return Deadlines(
            first_token=up.total_timeout, idle=up.total_timeout, total=up.total_timeout, send=up.total_timeout
        )
    return Deadlines(
        first_token=up.first_token_timeout,
        idle=up.idle_timeout,
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
    guard = StreamGuard(deadlines_for(request, stream=True))
    upstream_stream: UpstreamStream | None = None
    with lifecycle.track(guard), metrics.live_streams.track_inprogress():
        try:
            upstream_stream = await _open(request, body, guard)
            response = _sse_response(request, guard)
            await response.prepare(request)
            record.response_status = response.status
            guard.set_send_timeout_callback(response.abort)
            start = dialect.start()
            if start:
                await response.write(start)
            await relay(
                upstream_stream,
                dialect,
                response,
                guard,
                record,
                final_write_timeout=settings.stream.send_timeout,
                shutdown_retry_ms=settings.server.retry_after * 1000,
                gaps=metrics.child(metrics.chunk_gap, record.route),
            )
            await response.finish()
            return response
        finally:
            guard.close()
            if upstream_stream is not None:
                upstream_stream.close()


async def complete_chat(request: web.Request, body: dict[str, Any]) -> bytes:
    """Run a non-streaming chat; the client leaving cancels the upstream call with the handler."""
    app = request.app
    lifecycle = app[LIFECYCLE]
    record = request[RECORD]
    record.stream = False
    lifecycle.admit()
    guard = StreamGuard(deadlines_for(request, stream=False))
    with lifecycle.track(guard), app[METRICS].live_streams.track_inprogress():
        try:
            content: bytes = await _guarded(app[UPSTREAM].complete(body, request[REQUEST_ID]), guard, record)
        finally:
            guard.close()
    record.outcome = Outcome.COMPLETED
    _note_usage(content, record)
    return content


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


async def _open(request: web.Request, body: dict[str, Any], guard: StreamGuard) -> UpstreamStream:
    return await _guarded(request.app[UPSTREAM].open_stream(body, request[REQUEST_ID]), guard, request[RECORD])


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
        record.outcome = Outcome.UPSTREAM_ERROR
        record.error_code = error.code
        raise
    except GatewayError:
        record.outcome = Outcome.REJECTED
        raise


def _sse_response(request: web.Request, guard: StreamGuard) -> SSEResponse:
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
    )
