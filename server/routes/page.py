"""The demo page at GET / and the pages' static files, under a strict Content-Security-Policy.

Only the files named here are served (no directory to walk), each with CSP, nosniff and
no-cache headers; the page has no inline script or style, so the policy needs no exceptions.
A failed precondition (412) or an unsatisfiable Range (416) is the gateway's JSON error envelope
(`PageFile`), not an empty body labelled as the file.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter

from ..errors import GatewayError, InvalidRequestError, NotFoundError

STATIC = Path(__file__).resolve().parent.parent / "static"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
FILES = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "markdown.js": "text/javascript; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "sse.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}


async def index(request: web.Request) -> web.FileResponse:
    """The demo page."""
    return serve_file("index.html", "text/html; charset=utf-8")


async def static_file(request: web.Request) -> web.FileResponse:
    """One of the page's files; any other name is 404."""
    name = request.match_info["name"]
    content_type = FILES.get(name)
    if content_type is None:
        raise NotFoundError("No such file.")
    return serve_file(name, content_type)


def serve_file(name: str, content_type: str) -> web.FileResponse:
    """One file of server/static with the page headers."""
    return PageFile(STATIC / name, headers={**HEADERS, "Content-Type": content_type})


class PageFile(web.FileResponse):
    """aiohttp's FileResponse, answering its 412 and 416 with the JSON envelope, and `bytes=-0` with 416.

    The status is decided in `prepare`, after the handler and the middleware chain: a check in the
    handler could not see /dashboard's request (routes/dashboard.py calls `serve_file` without it)
    and would repeat aiohttp's whole order (If-Match, If-Unmodified-Since, then 304, then Range)
    with a stat of its own. Here aiohttp keeps deciding 412 and 304 by its own rules; only two
    of its steps are replaced: `_precondition_failed`, its hook for 412, and the start of
    `_prepare_open_file`, where it reads Range with the stat of the file it opened. Their names are
    aiohttp's private ones (pinned by requirements.lock): tests/test_static_errors.py fails if they move.
    The chain prepares it (middleware/chain.py), so that the access log and the request metrics
    record the status decided here; aiohttp's own `prepare` after the chain then returns at once.
    """

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        """Decide the status and send the file; once (FileResponse's own would send it again)."""
        if self.prepared:
            return self._payload_writer
        return await super().prepare(request)

    async def _precondition_failed(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        """aiohttp's 412 (If-Match or If-Unmodified-Since failed), as the envelope naming the header."""
        if request.if_match is not None:
            message = "If-Match names no current version of this file."
        else:
            message = "This file was modified after the If-Unmodified-Since date."
        return await self._refuse(request, InvalidRequestError(message, code="precondition_failed", status=412))

    async def _prepare_open_file(
        self, request: web.BaseRequest, fobj: io.BufferedReader, st: os.stat_result, file_encoding: str | None
    ) -> AbstractStreamWriter | None:
        """The file as aiohttp sends it, unless the Range it would read selects no byte: then a 416 envelope."""
        # No Range: one header lookup, and the file as before.
        if hdrs.RANGE in request.headers and _range_applies(request, st) and _unsatisfiable(request, st.st_size):
            error = InvalidRequestError(
                f"The Range header selects no bytes of this {st.st_size}-byte file: "
                "send one range, such as bytes=0-99 or bytes=-100.",
                code="range_not_satisfiable",
                status=416,
                # RFC 9110 15.5.17: a 416 names the current length.
                headers={hdrs.CONTENT_RANGE: f"bytes */{st.st_size}"},
            )
            return await self._refuse(request, error)
        return await super()._prepare_open_file(request, fobj, st, file_encoding)

    async def _refuse(self, request: web.BaseRequest, error: GatewayError) -> AbstractStreamWriter | None:
        """Send `error`'s envelope instead of the file, under the page headers (its type replaced)."""
        body = json.dumps(error.body()).encode()
        self.set_status(error.status)
        self.headers.update(error.headers)
        self.headers[hdrs.CONTENT_TYPE] = "application/json; charset=utf-8"
        self.content_length = len(body)
        # StreamResponse's prepare sends the head; FileResponse's would decide and send the file again.
        writer = await web.StreamResponse.prepare(self, request)
        if request.method != hdrs.METH_HEAD:
            await self.write(body)
        return writer


def _range_applies(request: web.BaseRequest, st: os.stat_result) -> bool:
    """Whether aiohttp reads Range: no If-Range date, or the file is not newer than it (as aiohttp decides)."""
    if_range = request.if_range
    return if_range is None or st.st_mtime <= if_range.timestamp()


def _unsatisfiable(request: web.BaseRequest, size: int) -> bool:
    """Whether the Range header selects no byte of a `size`-byte file, or is not one range aiohttp serves."""
    try:
        start = request.http_range.start
    except ValueError:
        return True  # malformed, several ranges, or the last byte before the first: aiohttp's 416 too
    spec = request.headers[hdrs.RANGE].partition("=")[2]
    if spec.startswith("-"):
        # The last N bytes (all of a shorter file). aiohttp reads "-0" as "0-", the whole file, but
        # RFC 9110 14.1.1 counts a suffix as satisfiable only when N is not 0.
        return int(spec[1:]) == 0
    return bool(start >= size)
