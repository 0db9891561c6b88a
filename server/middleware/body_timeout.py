"""Read a request's whole body within `body_timeout`, or answer 408 and close the connection.

A body still arriving is read here, once, before the handler runs (aiohttp keeps it, so the
handler's own `read()` returns it at once): a client that declares a body and sends it slowly, or never,
holds a handler for `body_timeout` at most. Bodies are bounded by `max_body_bytes` already.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.typedefs import Handler

from ..errors import RequestTimeoutError
from ..keys import SETTINGS
from .errors import render_error


@web.middleware
async def body_timeout_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """408 with the connection closed when the body is not complete in time."""
    # A body that came whole with the headers (the usual small JSON body) has nothing left to
    # wait for: no timer, and the handler's own read returns it at once.
    if request.body_exists and not request.content.is_eof():
        limit = request.app[SETTINGS].connections.body_timeout
        try:
            async with asyncio.timeout(limit):
                await request.read()
        except TimeoutError:
            response = render_error(RequestTimeoutError(f"The request body did not arrive within {limit:g} seconds."))
            response.force_close()
            return response
    return await handler(request)
