"""Write one `request_finished` event per request, and count it in the metrics.

Chat requests add the model, whether they streamed, time to first token, usage and how they
ended. Probes and /metrics log at debug level, so an orchestrator polling every second does
not flood the log.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from ..access import RequestRecord
from ..guard import Outcome
from ..keys import METRICS, RECORD

log = structlog.get_logger("sluice.access")

QUIET_PATHS = frozenset({"/health", "/livez", "/readyz", "/metrics"})


@web.middleware
async def access_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Time the request and log its end, also when the client left mid-way."""
    started = time.perf_counter()
    record = RequestRecord(started=asyncio.get_running_loop().time())
    resource = request.match_info.route.resource
    record.route = resource.canonical if resource is not None else "unmatched"
    request[RECORD] = record
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except asyncio.CancelledError:
        # A stream that started keeps its status; otherwise nginx's 499, "client closed request".
        status = record.response_status or 499
        record.outcome = record.outcome or Outcome.CLIENT_DISCONNECTED
        raise
    finally:
        duration = time.perf_counter() - started
        _log(request, record, status, duration)
        metrics = request.app[METRICS]
        metrics.child(metrics.requests, record.route, request.method, str(status)).inc()
        if record.key is not None:
            metrics.child(metrics.key_requests, record.key, str(status)).inc()
        if record.stream is not None:
            metrics.chat_finished(record, duration, status)


def _log(request: web.Request, record: RequestRecord, status: int, duration: float) -> None:
    fields: dict[str, object] = {
        "method": request.method,
        "path": request.path,
        "status": status,
        "duration_ms": round(duration * 1000, 2),
    }
    if record.key is not None:
        fields["key"] = record.key
    if record.malformed_chunks:
        fields["malformed_chunks"] = record.malformed_chunks
    if record.stream is not None:
        fields.update(
            model=record.model,
            stream=record.stream,
            outcome=record.outcome,
            ttft_ms=record.ttft_ms(),
            usage=record.usage_for_log(),
            finish_reason=record.finish_reason,
        )
        if record.error_code:
            fields["error_code"] = record.error_code
        if record.attempts:
            fields["attempts"] = record.attempts
            fields.update(record.extra)
    if request.path in QUIET_PATHS:
        log.debug("request_finished", **fields)
    else:
        log.info("request_finished", **fields)
