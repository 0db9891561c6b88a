"""Run the simulator: `python -m server.simulator --host 127.0.0.1 --port 0 [--control]`.

`--control` adds the test-only `/_sim/*` routes that tests and bench/ read requests back with.

Prints exactly one line, `simulator listening on http://HOST:PORT`, once the
socket is bound (with the real port when --port 0), and exits 0 on SIGTERM
or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from aiohttp import web

from .app import create_simulator_app
from .settings import Pace

# Streams still running at shutdown get this long before being cancelled;
# hanging requests are woken at once, so this only bounds paced streams.
SHUTDOWN_GRACE_S = 1.0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    defaults = Pace()
    parser = argparse.ArgumentParser(prog="python -m server.simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--ttft-ms", type=float, default=defaults.ttft_ms)
    parser.add_argument("--gap-ms", type=float, default=defaults.gap_ms)
    parser.add_argument("--tokens", type=int, default=defaults.tokens)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--control", action="store_true", help="add the test-only /_sim/* routes")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    """Serve until SIGTERM or SIGINT."""
    app = create_simulator_app(
        Pace(ttft_ms=args.ttft_ms, gap_ms=args.gap_ms, tokens=args.tokens),
        api_key=args.api_key,
        control=args.control,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_GRACE_S,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, args.host, args.port).start()
        port = runner.addresses[0][1]
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(f"simulator listening on http://{host}:{port}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def _run(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    _run(serve(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
