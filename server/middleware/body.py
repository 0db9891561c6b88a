"""The request body: refused over `max_body_bytes`, then read whole within `body_timeout`.

The chain's last step before the handler, after auth, so an unauthenticated client's body is
never read.

A declared Content-Length over the limit is refused before anything reads the body (chunked
bodies hit aiohttp's `client_max_size`). A body still arriving is then read here, once, before the
handler runs (aiohttp keeps it, so the handler's own `read()` returns it at once): a client that
declares a body and sends it slowly, or never, holds a handler for `body_timeout` at most.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from ..errors import PayloadTooLargeError, RequestTimeoutError
from ..http_protocol import watch_framing
from ..keys import SETTINGS
from .errors import render_error


def body_to_read(request: web.Request) -> bool:
    """413 for a declared length over the limit; else whether part of the body is still to arrive."""
    length = request.content_length
    if length is not None:
        limit = request.app[SETTINGS].server.max_body_bytes
        if length > limit:
            raise PayloadTooLargeError(f"The request body is {length} bytes; the limit is {limit}.")
    # A body that came whole with the headers (the usual small JSON body) has nothing left to
    # wait for: no timer, and the handler's own read returns it at once.
    return request.body_exists and not request.content.is_eof()


async def read_body(request: web.Request) -> web.Response | None:
    """Read the rest of the body within `body_timeout`; when it is late, the 408 (connection closed)."""
    deadline = request.app[SETTINGS].connections.body_timeout
    unwatch = watch_framing(request)
    try:
        async with asyncio.timeout(deadline):
            await request.read()
    except TimeoutError:
        late = RequestTimeoutError(f"The request body did not arrive within {deadline:g} seconds.")
        response = render_error(late)
        response.force_close()
        return response
    finally:
        unwatch()
    return None
