"""A response hook's failure, answered with the JSON envelope's 500 rather than an empty reply.

The response hooks (the chain's in chain.py, CORS's in routes/cors.py) run inside aiohttp's
`prepare`; aiohttp itself would close the connection without a byte when one raises. Each hook
catches its own failure and calls `hook_failed`: a wrapper would be one more coroutine per response.
"""

from __future__ import annotations

import structlog
from aiohttp import web
from aiohttp.http_writer import StreamWriter

from ..errors import GatewayError
from ..keys import RECORD, RESPONSE_STARTED

log = structlog.get_logger("sluice.errors")

# The access line's `error_code` once a response hook failed; it also marks the envelope answering
# the failure, which goes out whatever its hooks do. (The client's code is `internal_error`.)
HOOK_FAILED_CODE = "response_hook_failed"


def hook_failed(request: web.Request, exc: Exception, hook: object) -> None:
    """Answer a response hook's failure (call it while handling `exc`): raise the gateway's 500, once.

    aiohttp runs the hooks inside `prepare`, before any header is written, so the failure can still
    be a status: it is raised as a GatewayError, which the chain renders as the envelope (500,
    `internal_error`; the access line's `error_code` is HOOK_FAILED_CODE). aiohttp itself would
    close the connection without a byte. The envelope is prepared through the same hooks: a hook
    failing again then is logged and passed over, so the envelope goes out without that hook's
    headers rather than not at all. (A hook cannot fail once headers are out: hooks run before
    them. A request without a record, one aiohttp refused before the chain, has no envelope mark:
    its connection is closed, as before.)
    """
    name = getattr(hook, "__qualname__", type(hook).__name__)
    record = request.get(RECORD)
    if record is not None and record.error_code == HOOK_FAILED_CODE:
        log.exception("response_hook_failed", hook=name, answering="envelope")
        return
    if record is not None:
        record.error_code = HOOK_FAILED_CODE  # kept by the envelope's rendering, which sees it set
    request.pop(RESPONSE_STARTED, None)  # the chain's hook may have run first: nothing went out yet
    writer = request.writer
    if isinstance(writer, StreamWriter):
        # Set up for the failed response (a stream's unknown length: chunked) and never undone by
        # aiohttp: the envelope, with its Content-Length, would go out in chunks its client cannot read.
        writer.chunked = False
    log.exception("response_hook_failed", hook=name)
    raise GatewayError("Sluice failed to prepare its response.") from exc
