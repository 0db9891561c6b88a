"""The gateway's errors, one JSON shape for all of them, and the mapping from upstream failures.

    GatewayError                      any failure a client is told about
    ├── InvalidRequestError           400  malformed JSON, wrong or missing fields
    ├── AuthenticationError           401  a missing or wrong gateway key or browser token
    │   └── KeyRevokedError           401  the key was revoked or rotated while its request ran
    ├── NotFoundError                 404  unknown path
    │   └── ModelNotFoundError        404  a model not on the configured list
    ├── MethodNotAllowedError         405
    ├── RequestTimeoutError           408  the body did not arrive in time
    ├── ExpectationFailedError        417  an `Expect` other than 100-continue
    ├── PayloadTooLargeError          413
    ├── RateLimitedError              429  a gateway key's limit (with Retry-After)
    ├── UnsupportedMediaTypeError     415
    ├── ServiceUnavailableError       503  draining or shedding load (with Retry-After)
    └── UpstreamError                 502  the upstream failed or could not be reached
        ├── UpstreamRejectedError     4xx  the upstream refused the request (its message kept)
        ├── UpstreamRateLimitError    429  with the upstream's Retry-After
        ├── UpstreamUnavailableError  503  overloaded or every upstream's breaker open (Retry-After)
        ├── UpstreamTimeoutError      504
        └── UpstreamProtocolError     502  a stream that ended without finishing

How an upstream's answer maps onto this tree is one table, in upstreams/failures.py.

Every error renders as `{"error": {"message", "type", "param", "code"}}`: before the first byte
of a response as an HTTP status, after it as the dialect's final error event.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class GatewayError(Exception):
    """A failure with a status, an OpenAI-style type and code, and a client-safe message."""

    status = 500
    type = "server_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The JSON envelope every client sees."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequestError(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class NotFoundError(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class MethodNotAllowedError(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class AuthenticationError(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class KeyRevokedError(AuthenticationError):
    """The request's gateway key was revoked or rotated (a reload) while it ran: the request is ended."""

    code = "key_revoked"

    def __init__(self) -> None:
        super().__init__(
            "The gateway key was revoked or rotated while this request ran, so it was ended.",
            headers={"WWW-Authenticate": 'Bearer realm="sluice"'},
        )


class RequestTimeoutError(GatewayError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class ExpectationFailedError(GatewayError):
    status = 417
    type = "invalid_request_error"
    code = "expectation_failed"


class RateLimitedError(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class PayloadTooLargeError(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class UnsupportedMediaTypeError(GatewayError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class ServiceUnavailableError(GatewayError):
    status = 503
    type = "server_error"
    code = "service_unavailable"


class UpstreamError(GatewayError):
    status = 502
    # Unless the upstream's error event names one of OpenAI's types: it keeps it (failures.event_failure).
    type = "upstream_error"
    code = "upstream_error"
    # Filled by upstreams/failures.py: what the routing needs to decide on a retry.
    retry_after: float | None = None
    reason: str = "failed"


class UpstreamRejectedError(UpstreamError):
    type = "invalid_request_error"
    code = "upstream_rejected"


# Upstream error codes that asking the same upstream again cannot change: its account's quota is
# spent (OpenAI's 429 `insufficient_quota`). Not retried there (another candidate, on another
# account, may answer), and the client is told not to retry (middleware/errors.py).
NEVER_RETRIED_CODES = frozenset({"insufficient_quota"})


class UpstreamRateLimitError(UpstreamError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamUnavailableError(UpstreamError):
    status = 503
    type = "server_error"
    code = "upstream_unavailable"


class UpstreamTimeoutError(UpstreamError):
    status = 504
    type = "timeout_error"
    code = "upstream_timeout"


class UpstreamProtocolError(UpstreamError):
    code = "upstream_stream_broken"
