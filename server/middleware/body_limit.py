"""Refuse a body larger than the limit before anything reads it."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from ..errors import PayloadTooLargeError
from ..keys import SETTINGS


@web.middleware
async def body_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """413 for a declared Content-Length over the limit; chunked bodies hit aiohttp's client_max_size."""
    limit = request.app[SETTINGS].server.max_body_bytes
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLargeError(f"The request body is {length} bytes; the limit is {limit}.")
    return await handler(request)
