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
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from .config import LoadConfig, Pace, Shape
from .drivers import Client, run_crowd, run_loop, run_wave, warm_up
from .processes import prepare_harness_process
from .reading import Window
from .sampling import Watch
from .tally import Tally

WARMUP_REQUESTS = 10
WARMUP_PACE = Pace(tokens=4)
# An upstream stream still open this long after its client left "ran on".
RAN_ON_S = 1.0
# Concurrent long polls asking the simulator when each abandoned stream closed.
CLOSE_QUERIES = 50
# Seconds after stalled readers left before the gateway's RSS is read again.
SETTLE_S = 1.5


async def run(config: LoadConfig) -> dict[str, Any]:
    """Warm up, run the configured shape inside a measured window, and return the results."""
    tally = Tally(Window(math.inf, math.inf))
    await warm_up(Client(config, tally, WARMUP_PACE), WARMUP_REQUESTS)
    client = Client(config, tally, config.pace)
    watch = Watch(config.watch)
    window = tally.window
    stall: dict[str, Any] | None = None
    if config.shape is Shape.WAVE:
        window.start = time.perf_counter()
        watch.open()
        await run_wave(client, config.streams, config.ramp_s)
        window.end = time.perf_counter()
    elif config.shape is Shape.CROWD:
        window.start = time.perf_counter()
        watch.open()
        await run_crowd(client, config.streams, config.rounds, config.leave_after_ms / 1000)
        window.end = time.perf_counter()
    elif config.shape is Shape.STALL:
        window.start = time.perf_counter()
        watch.open()
        stall = await stalled_readers(client, config, watch)
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
    if stall is not None:
        results["stall"] = stall
    if config.shape in (Shape.LEAVE, Shape.CROWD) and config.sim_url is not None:
        results["disconnect"] = await upstream_closes(config.sim_url, tally.left, tally.sent_wall)
    return results


async def stalled_readers(client: Client, config: LoadConfig, watch: Watch) -> dict[str, Any]:
    """Open the streams, stop reading them, read the gateway's RSS while they stall and after they left.

    The RSS is read a third of the way into the hold and at its end: with backpressure holding,
    the two are the same, whatever the upstream offers.
    """
    role = "gateway" if "gateway" in config.watch else "upstream"
    opened = await asyncio.gather(*(client.stall() for _ in range(config.streams)))
    held = [entry for entry in opened if entry is not None]
    await asyncio.sleep(config.hold_s / 3)
    rss_early = watch.rss(role)
    await asyncio.sleep(config.hold_s * 2 / 3)
    rss_held = watch.rss(role)
    for connection, outcome in held:
        connection.close()
        outcome.ended_at = time.perf_counter()
        client.tally.ended(outcome, expected_chunks=None)
    await asyncio.sleep(SETTLE_S)
    return {
        "role": role,
        "readers": len(held),
        "rss_idle": watch.figures[role].rss_idle,
        "rss_early": rss_early,
        "rss_held": rss_held,
        "rss_after": watch.rss(role),
    }


async def upstream_closes(sim_url: str, left: list[tuple[str, float]], sent: dict[str, float]) -> dict[str, Any]:
    """Milliseconds from each client leaving to the simulator closing that stream's record,
    and from each client sending its request to the upstream opening the record.

    Asked after the window (long polls, so the streams that ran on are waited for), with aiohttp:
    this is bookkeeping, not load.
    """
    limit = asyncio.Semaphore(CLOSE_QUERIES)
    wait_s = 10.0
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    reach: list[float] = []

    async def close_ms(request_id: str, left_at: float) -> float | None:
        url = f"{sim_url}/_sim/requests/{request_id}"
        async with limit, session.get(url, params={"until": "closed", "timeout": str(wait_s)}) as response:
            record = await response.json()
        opened_at = record.get("opened_at")
        if opened_at is not None and request_id in sent:
            reach.append(round((opened_at - sent[request_id]) * 1000, 3))
        closed_at = record.get("closed_at")
        return None if closed_at is None else (closed_at - left_at) * 1000

    async with session:
        found = await asyncio.gather(*(close_ms(rid, at) for rid, at in left))
    closes = [round(ms, 3) for ms in found if ms is not None]
    return {
        "reach_ms": reach,
        "close_ms": closes,
        "never_closed": sum(1 for ms in found if ms is None),
        "ran_on": sum(1 for ms in found if ms is None or ms > RAN_ON_S * 1000),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """`--json-config` is the whole LoadConfig as JSON (see bench/config.py)."""
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--json-config", required=True, help="a LoadConfig as JSON")
    parser.add_argument("--out", type=Path, default=None, help="write the results here instead of to stdout")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run one config and print its results as one JSON line."""
    args = parse_args(argv)
    config = LoadConfig.from_json(args.json_config)
    prepare_harness_process()
    results = uvloop.run(run(config))
    if args.out is not None:
        # A file, not a pipe: thousands of samples make a line longer than a pipe holds.
        args.out.write_text(json.dumps(results))
        return 0
    # The event loop may leave stdout non-blocking; a large line would then be cut short.
    os.set_blocking(sys.stdout.fileno(), True)
    print(json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
