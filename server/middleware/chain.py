"""The gateway's one middleware: the chain's steps (see the package docstring), in order, in one coroutine.

One layer, not one per step: aiohttp wraps each middleware in a partial per request, and each
layer is a coroutine frame suspended for as long as a stream runs and re-entered on every resume
of the handler's task. Each step stays in its module as plain functions.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web
from aiohttp.typedefs import Handler

from ..http_protocol import BODY_ROUTES
from ..keys import BODY_BUDGET
from .access_log import cancelled_status, finish, open_record
from .auth import add_key_headers, admit, settle, take_limits
from .body import body_to_read, close_if_body_unread, hold_body, hold_read_body, read_body
from .connection_cap import over_cap
from .errors import mark_response_started, render_failure
from .hook_failure import hook_failed
from .request_id import add_gateway_headers, bind_request_id


@web.middleware
async def gateway_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, access log, errors, connection cap, auth, body, the key's limits, then the handler."""
    bind_request_id(request)
    started, record = open_record(request)
    app = request.app  # read once for the steps: a property of a property, per read
    status = 500
    body_in = False  # the request's body was read or had all come: no reason to close its connection
    try:
        try:
            response: web.StreamResponse | None = over_cap(request, app)
            if response is None:
                key = admit(request, record, app)
                if (request.method, record.route) in BODY_ROUTES:
                    reading = body_to_read(request, app)
                    record.body_held = hold_body(request, app)
                    counted = None if record.body_held else record  # no size to hold before: held as read
                    response = await read_body(request, counted) if reading else None
                    body_in = response is None
                    if body_in and not record.body_held:
                        record.body_held = await hold_read_body(request, app)
                if response is None:
                    lease = await take_limits(request, key) if key is not None else None
                    try:
                        response = await handler(request)
                    finally:
                        if lease is not None:
                            await settle(lease, record)
        except Exception as error:
            # After the lease is settled, before the access log: it logs the rendered status.
            response = render_failure(request, error)
            if response is None:
                raise
        if not body_in:
            close_if_body_unread(request, response)
        if isinstance(response, web.Response) and not response.prepared:
            response = await _prepare(request, response, body_in)
        elif isinstance(response, web.FileResponse) and not response.prepared:
            await _send_file(request, response)
        status = response.status
        return response
    except asyncio.CancelledError:
        status = cancelled_status(record)
        raise
    finally:
        if record.body_held:
            app[BODY_BUDGET].give_back(record.body_held)
        finish(request, record, status, started)


async def _prepare(request: web.Request, response: web.Response, body_in: bool) -> web.Response:
    """`response` with its headers prepared, or the envelope that answers a response hook's failure.

    Prepared here, not by aiohttp after the chain: aiohttp closes the connection without a byte
    when a hook fails there. A hook failing again on the envelope is passed over (hook_failure.py).
    Only a `web.Response`, whose `prepare` only buffers its head and may be called again (aiohttp does): a
    FileResponse sends its file in `prepare`, and a stream was prepared by its handler.
    """
    try:
        await response.prepare(request)
        return response
    except Exception as error:
        failure = render_failure(request, error)
        if failure is None:
            raise
    if not body_in:
        close_if_body_unread(request, failure)
    await failure.prepare(request)
    return failure


async def _send_file(request: web.Request, response: web.FileResponse) -> None:
    """Send the file here, so the access line and metrics get the status its `prepare` decides.

    A FileResponse settles 304, 206, 412 or 416 only in `prepare`; left to aiohttp, after the chain,
    every one was logged as the handler's 200. Its `prepare` must return at once when aiohttp calls it
    again (routes/page.py's PageFile does). A client gone meanwhile is aiohttp's to handle, as it was.
    """
    with contextlib.suppress(ConnectionError):
        await response.prepare(request)


async def response_prepared(request: web.Request, response: web.StreamResponse) -> None:
    """The chain's steps as the response's headers are about to go: its X-Request-ID, and no error status from now on.

    One hook for them all: aiohttp awaits each `on_response_prepare` hook, a coroutine per hook per response.
    Its failure is the envelope's 500 (hook_failure.py), caught here: a wrapper would be a coroutine more.
    """
    try:
        add_gateway_headers(request, response)
        mark_response_started(request)
    except Exception as exc:
        hook_failed(request, exc, response_prepared)


async def keyed_response_prepared(request: web.Request, response: web.StreamResponse) -> None:
    """`response_prepared`, and the key's rate-limit and token headers (gateway keys are on)."""
    try:
        add_gateway_headers(request, response)
        add_key_headers(request, response)
        mark_response_started(request)
    except Exception as exc:
        hook_failed(request, exc, keyed_response_prepared)
