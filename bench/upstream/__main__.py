"""Run the bench upstream: `python -m bench.upstream [--host H] [--port P]`.

Prints `bench upstream listening on http://HOST:PORT` once it listens; exits on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import uvloop

from ..processes import prepare_harness_process
from .protocol import UpstreamProtocol
from .records import Records

READY = "bench upstream listening on "
BACKLOG = 4096


async def serve(host: str, port: int) -> None:
    """Listen until a signal arrives."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    records = Records()
    server = await loop.create_server(lambda: UpstreamProtocol(records), host, port, backlog=BACKLOG)
    bound = server.sockets[0].getsockname()[1]
    print(f"{READY}http://{host}:{bound}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.upstream", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    prepare_harness_process()
    uvloop.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
