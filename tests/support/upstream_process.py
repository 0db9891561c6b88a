"""The start-up of a test upstream that runs as its own process (`python -m tests.support.NAME --port N`).

Each listens on 127.0.0.1 (`--port 0`: any free port), then prints `NAME listening on
http://127.0.0.1:PORT`, the line its fixture waits for, and serves until the process is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import web

HOST = "127.0.0.1"
ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _listening(name: str, port: int) -> None:
    print(f"{name} listening on http://{HOST}:{port}", flush=True)


async def serve_app(name: str, app: web.Application, port: int, *, handler_cancellation: bool = False) -> None:
    """Serve aiohttp `app` on `port` until the process is stopped."""
    runner = web.AppRunner(app, handler_cancellation=handler_cancellation)
    await runner.setup()
    await web.TCPSite(runner, HOST, port).start()
    _listening(name, runner.addresses[0][1])
    await asyncio.Event().wait()


async def serve_connections(name: str, handler: ConnectionHandler, port: int) -> None:
    """Hand each connection to `port` to `handler` (raw streams) until the process is stopped."""
    server = await asyncio.start_server(handler, HOST, port)
    _listening(name, server.sockets[0].getsockname()[1])
    await asyncio.Event().wait()


def run(serve: Callable[[int], Coroutine[Any, Any, None]]) -> None:
    """The process's main: `serve(port)` with the port of the command line's `--port`."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(serve(parser.parse_args().port))
