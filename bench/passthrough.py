"""The simplest aiohttp pass-through proxy: a reference for the benchmark, never part of Sluice.

`python -m bench.passthrough --upstream URL` forwards `POST /v1/chat/completions` to the upstream
and copies each read of the reply to the client as it arrives: no validation, no parsing, no
logs, no metrics, no timeouts. It is the floor of what a proxy on aiohttp costs (uvloop, like
Sluice), measured in the same run as Sluice so that every figure has it beside.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web

READY = "passthrough listening on "
UPSTREAM = web.AppKey("upstream", str)
SESSION = web.AppKey("session", aiohttp.ClientSession)


async def proxy(request: web.Request) -> web.StreamResponse:
    """Send the body upstream and copy the reply back, read by read."""
    headers = {"Content-Type": "application/json"}
    if "X-Request-ID" in request.headers:
        headers["X-Request-ID"] = request.headers["X-Request-ID"]
    url = request.app[UPSTREAM] + request.path
    async with request.app[SESSION].post(url, data=await request.read(), headers=headers) as upstream:
        response = web.StreamResponse(status=upstream.status)
        response.content_type = upstream.content_type
        await response.prepare(request)
        async for data in upstream.content.iter_any():
            await response.write(data)
        await response.write_eof()
        return response


async def session_ctx(app: web.Application) -> AsyncIterator[None]:
    """One pooled client session for the app's life."""
    app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    yield
    await app[SESSION].close()


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m bench.passthrough", description=__doc__)
    parser.add_argument("--upstream", required=True, help="the upstream's base URL, e.g. http://127.0.0.1:9000")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    app = web.Application()
    app[UPSTREAM] = args.upstream.rstrip("/")
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/v1/chat/completions", proxy)
    print(f"{READY}http://{args.host}:{args.port}", flush=True)
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        print=None,
        access_log=None,
        backlog=4096,
        handler_cancellation=True,
        loop=uvloop.new_event_loop(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
