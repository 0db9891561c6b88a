"""Write one `request_finished` event per request, and count it in the metrics.

The chain (chain.py) opens the request's record before its other steps and finishes it after
them, so the line sees the final status, a rendered error's included.

Every line names the client (the peer, or behind `server.trusted_proxies` the address they
forwarded for) and, for an error, its `error_code` and `param`. Chat requests add the model,
whether they streamed, time to first token, usage and how they ended, and each upstream attempt
of the routing (`attempts`: retries, fallbacks, hedges). `resent` counts the requests the upstream
client sent once more on a fresh connection after a kept-alive one failed before any byte of its
answer (upstreams/client.py): transport, not routing, so not in `attempts` (no breaker judged it,
no retry budget paid for it), but the upstream may have taken the request twice. Probes and
/metrics log at debug level, so an orchestrator polling every second does not flood the log;
server errors, a rejected upstream key, and a stream that failed on the upstream's side after it
started (200: its status cannot say so) log at warning.

With `--workers`, a request forwarded to the worker that owns its stream (worker_proxy.py) is
logged and counted once, by that worker, with the client the forwarding worker saw.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import structlog
from aiohttp import web

from ..access import RequestRecord
from ..client_address import client_address
from ..credentials import REJECTED_CODE
from ..guard import Expiry, Outcome
from ..keys import METRICS, RECORD, SETTINGS, UPSTREAM_CREDENTIALS, WORKER_PROXY
from ..metrics import count

log = structlog.get_logger("sluice.access")

FORWARDED_FOR = "X-Forwarded-For"
QUIET_PATHS = frozenset({"/health", "/livez", "/readyz", "/metrics"})
# Statuses that are the operator's business: not 503, which draining and load shedding answer by design.
WARNING_STATUSES = frozenset({500, 502, 504})
# How a started stream ends when its upstream failed it; a send timeout is the client's stall.
FAILED_OUTCOMES = frozenset({Outcome.UPSTREAM_ERROR, Outcome.TIMEOUT})


def open_record(request: web.Request) -> tuple[float, RequestRecord]:
    """Start timing the request and open the record its handler fills: the start, and the record."""
    started = time.perf_counter()
    app = request.app
    record = RequestRecord(started=asyncio.get_running_loop().time())
    resource = request.match_info.route.resource
    record.route = resource.canonical if resource is not None else "unmatched"
    # Now, while the connection is there: a stream's connection may be gone by the time it is logged.
    # Only a worker of several listens on a Unix socket: a single process skips asking the socket.
    forwarded = app.get(WORKER_PROXY) is not None and _forwarded(request)
    record.via_worker = forwarded
    record.client = client_of(request, forwarded, app)
    request[RECORD] = record
    return started, record


def cancelled_status(record: RequestRecord) -> int:
    """The status to log for a request cancelled because its client left."""
    # A stream that started keeps its status; otherwise nginx's 499, "client closed request".
    record.outcome = record.outcome or Outcome.CLIENT_DISCONNECTED
    return record.response_status or 499


def finish(request: web.Request, record: RequestRecord, status: int, started: float) -> None:
    """Log the request's end and count it (also when the client left mid-way)."""
    duration = time.perf_counter() - started
    app = request.app
    if record.stream is not None:
        app[UPSTREAM_CREDENTIALS].note(record.error_code, answered=record.outcome is Outcome.COMPLETED)
    if record.forwarded_to is not None:
        return  # the worker that owns the stream logged and counted it
    _log(request, record, status, duration)
    metrics = app[METRICS]
    count(metrics.child(metrics.requests, record.route, request.method, str(status)))
    if record.key is not None:
        count(metrics.child(metrics.key_requests, record.key, str(status)))
    if record.stream is not None:
        metrics.chat_finished(record, duration, status)


def _log(request: web.Request, record: RequestRecord, status: int, duration: float) -> None:
    if request.path in QUIET_PATHS:
        level = logging.DEBUG
    elif status in WARNING_STATUSES or record.error_code == REJECTED_CODE or _failed_after_start(record, status):
        level = logging.WARNING
    else:
        level = logging.INFO
    if not log.is_enabled_for(level):
        return  # below the configured level: build nothing
    fields: dict[str, object] = {
        "method": request.method,
        "path": request.path,
        "status": status,
        "duration_ms": round(duration * 1000, 2),
        "client": record.client,
    }
    if record.via_worker:
        fields["forwarded_by_worker"] = True
    if record.error_code:  # an error's, or the final event's of a stream (or a browser stream's reader)
        fields["error_code"] = record.error_code
        if status >= 400:
            fields["param"] = record.error_param
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
        if record.attempts:
            fields["attempts"] = record.attempts
            fields.update(record.extra)  # upstream, served_model, resent (see the docstring)...
    elif record.outcome is not None:  # a browser stream's reader: completed, client_disconnected, timeout...
        fields["outcome"] = record.outcome
    log.log(level, "request_finished", **fields)


def _failed_after_start(record: RequestRecord, status: int) -> bool:
    """A stream answered 200 whose upstream then failed it (cut, error event, stall)."""
    return record.outcome in FAILED_OUTCOMES and status < 400 and record.error_code != Expiry.SEND


def _forwarded(request: web.Request) -> bool:
    """True for a request another worker forwarded over this worker's Unix socket."""
    transport = request.transport
    # The socket object's family, not its address: uvloop answers "sockname" with a system call.
    sock = transport.get_extra_info("socket") if transport is not None else None
    return sock is not None and sock.family == socket.AF_UNIX


def client_of(request: web.Request, forwarded: bool, app: web.Application) -> str | None:
    """The client's address, as the access log names it (`forwarded`: another worker sent the request).

    `app` is the request's, read once by the caller (a property of a property, per read).
    """
    if forwarded:
        # Only the other workers can reach the Unix socket; they pass on the client they saw.
        return request.headers.get(FORWARDED_FOR)
    trusted = app[SETTINGS].server.trusted_proxies
    # Without trusted proxies nobody's X-Forwarded-For is believed: no header lookup.
    return client_address(request.remote, _forwarded_for(request) if trusted else None, trusted)


def _forwarded_for(request: web.Request) -> str | None:
    """All of the request's X-Forwarded-For lines as one list, in order (RFC 9110 §5.3).

    A proxy may append its own line (HAProxy's `option forwardfor`) after the client's: read
    alone, the first line is whatever the client wrote.
    """
    lines = request.headers.getall(FORWARDED_FOR, ())
    if len(lines) < 2:
        return lines[0] if lines else None
    return ",".join(lines)
