"""Render every failure as the JSON envelope `{"error": {"message", "type", "param", "code"}}`.

Only before the response has started (`mark_response_started`, run by the chain's response hook,
records that): after that the relay has already ended the stream with an error event, and a second answer
would corrupt it.
"""

from __future__ import annotations

import structlog
from aiohttp import web

from ..errors import (
    NEVER_RETRIED_CODES,
    GatewayError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
    UpstreamError,
)
from ..keys import RECORD, RESPONSE_STARTED
from ..upstreams.backoff import retryable

log = structlog.get_logger("sluice.errors")


def render_failure(request: web.Request, error: Exception) -> web.Response | None:
    """The envelope for GatewayError, aiohttp's HTTP errors and unexpected exceptions; None when
    `error` must propagate (an HTTPException under 400, or the response already started).

    Call it while handling `error`: an unexpected exception is logged with its traceback.
    """
    if isinstance(error, GatewayError):
        if request.get(RESPONSE_STARTED):
            return None
        return render_noted(request, error)
    if isinstance(error, web.HTTPException):
        if error.status < 400 or request.get(RESPONSE_STARTED):
            return None
        return render_noted(request, _from_http_exception(error))
    if isinstance(error, web.RequestPayloadError) and not request.get(RESPONSE_STARTED):
        # The body's framing or Content-Encoding broke while it was read (a "gzip" body that is
        # not): the client's fault, and the rest of the connection cannot be trusted.
        response = render_noted(
            request,
            InvalidRequestError(
                "The request body could not be read: its chunked framing or its Content-Encoding is broken.",
                code="invalid_body",
            ),
        )
        response.force_close()
        # The rest of the body is never read: marked ended, so aiohttp does not drain it after the
        # answer, meet the same error again and log it as an unhandled exception with a traceback.
        request.content.feed_eof()
        return response
    log.exception("request_failed")
    if request.get(RESPONSE_STARTED):
        return None  # aiohttp closes the connection; the client sees a cut, never a second answer
    return render_noted(request, GatewayError("Sluice failed to handle the request."))


def mark_response_started(request: web.Request) -> None:
    """Note that headers are going out: from now on a failure cannot become an HTTP status."""
    request[RESPONSE_STARTED] = True


def render_noted(request: web.Request, error: GatewayError) -> web.Response:
    """Render `error`, noting its code and param for the access log: every refusal's line names its code."""
    record = request.get(RECORD)
    if record is not None:
        record.error_code = record.error_code or error.code
        record.error_param = error.param
    return render_error(error, retried=record is not None and len(record.attempts) > 1)


def _sdk_retry_useless(error: UpstreamError, retried: bool) -> bool:
    """Whether an SDK's retry of a 502 or 504 would only repeat what Sluice did or chose not to do."""
    # Not retryable at all (refused credentials, a reply that may have been paid for, a silent
    # upstream Sluice will not ask again), or retried by Sluice already.
    return retried or not retryable(error)


# A 502 or 504 Sluice answers after its own routing retried it (other attempts, other upstreams,
# fallbacks), or chose not to (backoff.retryable: refused credentials, a reply that may have been
# paid for, an upstream that did not answer in time). The OpenAI SDKs retry a 5xx twice more by
# default, each retry a whole routing again: 9 upstream attempts for one call, enough to open a
# breaker for every client. `x-should-retry: false` (which both SDKs read before the status) stops
# that. A retryable failure from a single attempt (`routing.retries = 0` and one candidate) keeps
# the SDK's retry, the only one it gets. A 429 or a 503 keeps its Retry-After and the SDK's retry,
# except a 429 that no retry can change (a spent quota, errors.NEVER_RETRIED_CODES).
NOT_RETRIED = {"x-should-retry": "false"}


def render_error(error: GatewayError, *, retried: bool = False) -> web.Response:
    """The envelope as a JSON response with the error's status and headers.

    `retried`: Sluice asked its upstreams more than once for this request.
    """
    headers = error.headers
    if isinstance(error, UpstreamError) and (
        (error.status in (502, 504) and _sdk_retry_useless(error, retried)) or error.code in NEVER_RETRIED_CODES
    ):
        headers = {**headers, **NOT_RETRIED} if headers else NOT_RETRIED
    return web.json_response(error.body(), status=error.status, headers=headers)


def _from_http_exception(exc: web.HTTPException) -> GatewayError:
    if isinstance(exc, web.HTTPNotFound):
        return NotFoundError("No such route; see the README for the API.")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return MethodNotAllowedError(
            f"Method {exc.method} is not allowed here; use {allowed}.", headers={"Allow": allowed}
        )
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLargeError("The request body is larger than the limit.")
    if isinstance(exc, web.HTTPUnsupportedMediaType):
        return UnsupportedMediaTypeError("Content-Type must be application/json.")
    if exc.status == 400:
        return InvalidRequestError(exc.reason or "Bad request.")
    return GatewayError(exc.reason or "Request failed.", status=exc.status, code=None)
