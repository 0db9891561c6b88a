"""The request body: refused over `max_body_bytes`, then read whole within `body_timeout`.

The chain's step after auth, so an unauthenticated client's body is never read, and before the
key's limits are taken, so a slow body holds none of them. Only the routes whose handlers read a
body (`BODY_ROUTES`, in http_protocol.py) have it read, and `100 Continue` said: any other
request (a probe, an unknown route) is answered without its body, and a connection whose body
was left unread is closed after the answer and a short linger (`close_if_body_unread`).

A declared Content-Length over the limit is refused before anything reads the body (chunked
bodies hit aiohttp's `client_max_size`). A body still arriving is then read here, once, before the
handler runs (aiohttp keeps it, so the handler's own `read()` returns it at once): a client that
declares a body and sends it slowly, or never, holds a handler for `body_timeout` at most.

An encoded body (Content-Encoding) is decoded as it is read, and 1 MB of gzip can be 1 GB: it is
read in aiohttp's own chunks, refused soon past the limit (`read_counted`), and when left unread,
its rest is dropped undecoded (http_protocol.close_after_response). A chunked or encoded body has
no size to hold against the process's budget before it is read: it is held as it is read, chunk by
chunk (decoded), so sixty stalled uploads of 16 KB of gzip each no longer held 1 GB unbudgeted.
"""

from __future__ import annotations

import asyncio

from aiohttp import hdrs, web

from ..access import RequestRecord
from ..errors import ExpectationFailedError, PayloadTooLargeError, RequestTimeoutError
from ..http_protocol import DECODED, close_after_response, unsupported_encoding, watch_framing
from ..keys import BODY_BUDGET, SETTINGS
from .errors import render_noted

CONTINUE = "100-continue"


def body_to_read(request: web.Request, app: web.Application | None = None) -> bool:
    """417 for an unknown `Expect`, 413 for a declared length over the limit; else whether part of
    the body is still to arrive (`app`: the request's, when the caller has it)."""
    headers = request.headers
    expect = headers.get(hdrs.EXPECT)
    if expect is not None and expect.lower() != CONTINUE:
        raise ExpectationFailedError("The only expectation Sluice meets is Expect: 100-continue.", param="Expect")
    encoding = headers.get(hdrs.CONTENT_ENCODING)
    if encoding is not None and encoding.strip().lower() not in DECODED:
        # aiohttp decodes these (or refuses them as it parses); any other it passes on as it came,
        # and the body would be read as if it were not encoded.
        raise unsupported_encoding()
    length = request.content_length
    if length is not None:
        limit = (request.app if app is None else app)[SETTINGS].server.max_body_bytes
        if length > limit:
            raise PayloadTooLargeError(f"The request body is {length} bytes; the limit is {limit}.")
    # A body that came whole with the headers (the usual small JSON body) has nothing left to
    # wait for: no timer, and the handler's own read returns it at once.
    return request.body_exists and not request.content.is_eof()


def hold_body(request: web.Request, app: web.Application) -> int:
    """Hold the declared body's bytes against the process's budget (body_budget.py), before reading it.

    0 for a body of no declared length (chunked), or an encoded one, whose declared length is not
    what is held (1 KB of gzip is held as the 1 MB it decodes to): either is held as it is read
    (`read_body`), or, when it came whole with its headers, once read (`hold_read_body`).
    """
    length = request.content_length
    if not length or hdrs.CONTENT_ENCODING in request.headers:
        return 0
    return app[BODY_BUDGET].take(length)


async def hold_read_body(request: web.Request, app: web.Application) -> int:
    """Hold a chunked or encoded body, once read whole (decoded): its bytes, or 0 for none."""
    if not request.body_exists:
        return 0
    size = len(await request.read())  # read already: aiohttp returns what it kept
    return app[BODY_BUDGET].take(size) if size else 0


async def read_body(request: web.Request, counted: RequestRecord | None = None) -> web.Response | None:
    """Read the rest of the body within `body_timeout`; when it is late, the 408 (connection closed).

    `counted`: the request's record, when its body was not held before it was read (chunked or
    encoded): each chunk is then held as it comes, in `counted.body_held`, and past the process's
    budget the body gets 503 `overloaded` (its connection closed, the rest unread).
    """
    deadline = request.app[SETTINGS].connections.body_timeout
    if request.headers.get(hdrs.EXPECT, "").lower() == CONTINUE:
        # Only now, after auth and the size check (defer_expectation kept aiohttp from saying it
        # at once): a client refused before this never uploads its body.
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    unwatch = watch_framing(request)
    try:
        async with asyncio.timeout(deadline):
            if counted is not None or request.content.total_compressed_bytes is not None:
                await read_counted(request, counted)  # aiohttp decodes an encoded body as it is read
            else:
                await request.read()
    except TimeoutError:
        late = RequestTimeoutError(f"The request body did not arrive within {deadline:g} seconds.")
        return render_noted(request, late)  # its connection closed after it: see close_if_body_unread
    finally:
        unwatch()
    return None


async def read_counted(request: web.Request, record: RequestRecord | None) -> None:
    """Read a chunked or encoded body whole, each chunk held against the process's budget as it
    comes (in `record.body_held`; none without a record); over `client_max_size` (decoded), 413.

    For an encoded body, aiohttp's `read()` first raises the body's buffer to the limit, then
    decodes up to three times that ahead of the size check (5.75 MiB for a 1 MiB limit; 1 MB of
    gzip can be 1 GB decoded). Read at the buffer's own size, decoding stops within twice its
    read-ahead (its high water and one decoded chunk, 768 KiB at aiohttp's defaults) past the
    limit, whatever the limit.
    """
    limit = request.client_max_size
    content = request.content
    budget = request.app[BODY_BUDGET] if record is not None else None
    body = bytearray()
    while chunk := await content.readany():
        body.extend(chunk)
        if len(body) > limit:
            raise PayloadTooLargeError(f"The request body is larger than the limit, {limit} bytes.")
        if budget is not None and record is not None:
            record.body_held += budget.take(len(chunk), record.body_held)
    request._read_bytes = bytes(body)  # what `read()` returns from now on (an aiohttp 3.14 internal)


def close_if_body_unread(request: web.Request, response: web.StreamResponse) -> None:
    """Close the connection after `response` and a short linger when part of the request's body is unread.

    aiohttp would otherwise go on reading and discarding the rest for up to 10 seconds after the
    answer, the connection counted as busy all along: a client with no key held a connection slot
    that long for one packet. Now it lingers 2 s, and the connection cap may close it at once
    (http_protocol.close_after_response). A body that came whole with its headers is no reason to close.
    """
    if request.body_exists and not request.content.is_eof():
        response.force_close()
        close_after_response(request)


async def defer_expectation(request: web.Request) -> None:
    """Every route's `expect_handler`: leave `Expect` to the chain (`body_to_read`, `read_body`).

    aiohttp's own answers `100 Continue` before any check (a client then uploads a body that auth
    or the size limit refuses anyway), and an unknown expectation with a plain-text 417 outside
    the chain.
    """
