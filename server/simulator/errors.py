"""OpenAI-shaped error responses, including the status-code faults."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from .plan import Fault
from .wire import error_body

INVALID_REQUEST = "invalid_request_error"


def error_response(
    status: int,
    message: str,
    error_type: str = INVALID_REQUEST,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """A JSON error response in the OpenAI shape."""
    return web.Response(
        status=status,
        body=error_body(message, error_type, param, code),
        content_type="application/json",
        headers=headers,
    )


def unauthorized(message: str) -> web.Response:
    """401 as OpenAI sends it for a bad key."""
    return error_response(401, message, code="invalid_api_key")


def status_fault_response(fault: Fault, retry_after: str | None = None) -> web.Response | None:
    """The error response for a fault answered before any body, else None."""
    if fault is Fault.RATE_LIMIT:
        return error_response(
            429,
            "simulated rate limit",
            error_type="requests",
            code="rate_limit_exceeded",
            headers=_retry_after(retry_after or "7"),
        )
    if fault is Fault.OVERLOADED:
        headers = _retry_after(retry_after) if retry_after else None
        return error_response(503, "simulated overload", error_type="server_error", code="overloaded", headers=headers)
    if fault is Fault.CONTEXT_LENGTH:
        return error_response(400, "simulated: too many tokens", param="messages", code="context_length_exceeded")
    if fault is Fault.CONTENT_POLICY:
        return error_response(400, "simulated: refused by policy", code="content_policy_violation")
    if fault is Fault.SERVER_ERROR:
        return error_response(500, "simulated server error", error_type="server_error")
    if fault is Fault.BAD_REQUEST:
        return error_response(400, "simulated bad request", param="messages")
    if fault is Fault.UNAUTHORIZED:
        return unauthorized("simulated invalid api key")
    if fault is Fault.ERROR_REPLY:
        # As some providers answer when overloaded: status 200, and an error in place of the answer.
        return error_response(200, "simulated: model overloaded", error_type="server_error", code="overloaded")
    return None


def _retry_after(value: str) -> dict[str, str]:
    if value.endswith("ms"):
        return {"retry-after-ms": value.removesuffix("ms")}
    return {"Retry-After": value}
