"""The request body: refused over `max_body_bytes`, then read whole within `body_timeout`.

Runs after auth, so an unauthenticated client's body is never read. Both checks live in one
middleware: each layer of the chain is a coroutine suspended for as long as a stream runs.

A declared Content-Length over the limit is refused before anything reads the body (chunked
bodies hit aiohttp's `client_max_size`). A body still arriving is then read here, once, before the
handler runs (aiohttp keeps it, so the handler's own `read()` returns it at once): a client that
declares a body and sends it slowly, or never, holds a handler for `body_timeout` at most.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.typedefs import Handler

from ..errors import PayloadTooLargeError, RequestTimeoutError
from ..keys import SETTINGS
from .errors import render_error


@web.middleware
async def body_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """413 for a declared length over the limit; 408 with the connection closed when the body is late."""
    length = request.content_length
    if length is not None:
        limit = request.app[SETTINGS].server.max_body_bytes
        if length > limit:
            raise PayloadTooLargeError(f"The request body is {length} bytes; the limit is {limit}.")
    # A body that came whole with the headers (the usual small JSON body) has nothing left to
    # wait for: no timer, and the handler's own read returns it at once.
    if request.body_exists and not request.content.is_eof():
        deadline = request.app[SETTINGS].connections.body_timeout
        try:
            async with asyncio.timeout(deadline):
                await request.read()
        except TimeoutError:
            late = RequestTimeoutError(f"The request body did not arrive within {deadline:g} seconds.")
            response = render_error(late)
            response.force_close()
            return response
    return await handler(request)
