"""Give every request an id: the caller's well-formed X-Request-ID, or a new one (the chain's first step).

The response hook that stamps the id also names the server (`Server: sluice`, no version): one
store in a call the hook makes anyway, rather than a step of its own.
"""

from __future__ import annotations

import random
import re

import structlog
from aiohttp import hdrs, web

from ..http_protocol import SERVER_NAME
from ..keys import REQUEST_ID

HEADER = "X-Request-ID"
_WELL_FORMED = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def bind_request_id(request: web.Request) -> None:
    """Bind the request id to the request and to every log line written while serving it."""
    incoming = request.headers.get(HEADER, "")
    # No header (the usual request): no match tried, an empty id is never well-formed.
    request_id = incoming if incoming and _WELL_FORMED.fullmatch(incoming) else _new_id()
    request[REQUEST_ID] = request_id
    # No `clear_contextvars` first (it copies and walks the whole context): aiohttp serves each
    # request in a task of its own, whose context is a copy of its connection's, so nothing bound
    # while serving one request is there for the next; and the request id is all Sluice binds.
    structlog.contextvars.bind_contextvars(request_id=request_id)


def add_gateway_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Stamp the id, and `Server: sluice`, on the response just before its headers go out, streams included.

    aiohttp only sets its own Server header (its and Python's versions) when the response has none.
    """
    headers = response.headers
    headers[hdrs.SERVER] = SERVER_NAME  # first: a response without a request id names the server too
    try:  # not `request.get`: Mapping's get is a call more per response, around the same lookup
        request_id = request[REQUEST_ID]
    except KeyError:
        return
    if request_id is not None:
        headers[HEADER] = request_id


def _new_id() -> str:
    """32 random hex digits, as `uuid4().hex` looks, for a fifth of its cost.

    From `random`'s generator, not the kernel's (`os.urandom` is a `getrandom` system call per
    request): an id must be unique, not secret. The generator is seeded from the kernel at start
    and again in a forked child.
    """
    return f"{random.getrandbits(128):032x}"
