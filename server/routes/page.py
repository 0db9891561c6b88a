"""The demo page at GET / and the pages' static files, under a strict Content-Security-Policy.

Only the files named here are served (no directory to walk), each with CSP, nosniff and
no-cache headers; the page has no inline script or style, so the policy needs no exceptions.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from ..errors import NotFoundError

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
    return web.FileResponse(STATIC / name, headers={**HEADERS, "Content-Type": content_type})
