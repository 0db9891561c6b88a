"""The middleware chain, in one place.

Order matters, outermost first:
1. request id: every later step, and every log line, carries it;
2. access log: times the whole request and sees the final status, including rendered errors;
3. errors: turns any failure into the JSON envelope before the access log records it;
4. body limit: refuses oversized bodies before a handler reads them.
CORS is not a middleware here: aiohttp-cors wraps the routes and answers preflights itself.
"""

from __future__ import annotations

from aiohttp import web

from .access_log import access_log_middleware
from .body_limit import body_limit_middleware
from .errors import error_middleware, mark_response_started
from .request_id import add_request_id_header, request_id_middleware


def setup_middlewares(app: web.Application) -> None:
    """Install the chain and its response hooks (X-Request-ID, and noting that a response started)."""
    app.middlewares.extend([request_id_middleware, access_log_middleware, error_middleware, body_limit_middleware])
    app.on_response_prepare.append(add_request_id_header)
    app.on_response_prepare.append(mark_response_started)
