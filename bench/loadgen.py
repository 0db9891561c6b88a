"""The load generator, a process of its own: `python -m bench.loadgen --json-config '{...}'`.

Runs one `LoadConfig` on uvloop and prints one JSON line: request counts, the window's samples
(TTFT, largest gaps, latencies, chunks), CPU seconds and RSS of every watched process and of
itself, and for the disconnect workload when the upstream closed each abandoned stream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from typing import Any

import aiohttp
import uvloop

from .config import LoadConfig, Pace, Shape
from .drivers import Client, run_loop, run_wave, warm_up
from .processes import raise_fd_limit
from .reading import Window
from .sampling import Watch
from .tally import Tally

WARMUP_REQUESTS = 10
WARMUP_PACE = Pace(tokens=4)
# An upstream stream still open this long after its client left "ran on".
RAN_ON_S = 1.0
# Concurrent long polls asking the simulator when each abandoned stream closed.
CLOSE_QUERIES = 50


async def run(config: LoadConfig) -> dict[str, Any]:
    """Warm up, run the configured shape inside a measured window, and return the results."""
    tally = Tally(Window(math.inf, math.inf))
    await warm_up(Client(config, tally, WARMUP_PACE), WARMUP_REQUESTS)
    client = Client(config, tally, config.pace)
    watch = Watch(config.watch)
    window = tally.window
    if config.shape is Shape.WAVE:
        window.start = time.perf_counter()
        watch.open()
        await run_wave(client, config.streams, config.ramp_s)
        window.end = time.perf_counter()
    else:
        window.start = time.perf_counter() + config.warmup_s
        window.end = window.start + config.duration_s
        loop = asyncio.get_running_loop()
        loop.call_later(config.warmup_s, watch.open)
        # CPU stops counting when the window closes, not when the last request sent in it ends.
        loop.call_later(config.warmup_s + config.duration_s, watch.stop)
        leave_after = config.leave_after_ms / 1000 if config.shape is Shape.LEAVE else None
        await run_loop(client, config.clients, window.end, leave_after)
    watch.stop()
    results = tally.to_json()
    results["window_s"] = window.end - window.start
    results["cpu_window_s"] = watch.span_s
    results["processes"] = {role: figures.to_json() for role, figures in watch.figures.items()}
    results["system_busy_s"] = watch.system_busy_s
    results["listen_overflows"] = watch.listen_overflows
    if config.shape is Shape.LEAVE and config.sim_url is not None:
        results["disconnect"] = await upstream_closes(config.sim_url, tally.left)
    return results


async def upstream_closes(sim_url: str, left: list[tuple[str, float]]) -> dict[str, Any]:
    """Milliseconds from each client leaving to the simulator closing that stream's record.

    Asked after the window (long polls, so the streams that ran on are waited for), with aiohttp:
    this is bookkeeping, not load.
    """
    limit = asyncio.Semaphore(CLOSE_QUERIES)
    wait_s = 10.0
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def close_ms(request_id: str, left_at: float) -> float | None:
        url = f"{sim_url}/_sim/requests/{request_id}"
        async with limit, session.get(url, params={"until": "closed", "timeout": str(wait_s)}) as response:
            record = await response.json()
        closed_at = record.get("closed_at")
        return None if closed_at is None else (closed_at - left_at) * 1000

    async with session:
        found = await asyncio.gather(*(close_ms(rid, at) for rid, at in left))
    closes = [round(ms, 3) for ms in found if ms is not None]
    return {
        "close_ms": closes,
        "never_closed": sum(1 for ms in found if ms is None),
        "ran_on": sum(1 for ms in found if ms is None or ms > RAN_ON_S * 1000),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """`--json-config` is the whole LoadConfig as JSON (see bench/config.py)."""
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--json-config", required=True, help="a LoadConfig as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run one config and print its results as one JSON line."""
    config = LoadConfig.from_json(parse_args(argv).json_config)
    raise_fd_limit()
    results = uvloop.run(run(config))
    # The event loop may leave stdout non-blocking; a large line would then be cut short.
    os.set_blocking(sys.stdout.fileno(), True)
    print(json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
