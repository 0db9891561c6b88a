"""`python -m bench.redis_mode` (or the `redis-mode` workload of `python -m bench`): what Redis mode adds.

Starts the simulator, a redis-server (Debian's) and Sluice instances, then runs the same browser
streams (POST /chat/streams, then GET its events) three ways: memory mode; Redis mode read on the
producing instance; Redis mode read through a second instance (events travel through Redis). It
prints, for each, the gap between token events at the client (p50, p99) and the CPU each gateway
and Redis spent per event. The upstream paces tokens evenly, so a gap above the pace is added by
what lies between. The three run in turn, `--rounds` times on the same processes: each round's
figures are printed, then their medians, and the p99 a variant adds to memory mode's is the
median of what it added round by round. Uses the test suite's process helpers (tests/support).

`--delay` measures instead how much later each event reaches a reader on another instance than
a reader of the same stream on its producer, both reading at once: stalls the two share (the
upstream's, the producer's, the client's) cancel out, so on a busy machine this shows the cost of
the path through Redis more steadily than the gap percentiles do.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.sampling import cpu_seconds
from tests.support.processes import Gateway, start_gateway, start_simulator
from tests.support.servers import start_redis
from tests.support.sse import SSEParser

# Rounds of the three variants: the target is judged on the median of the rounds' added p99.
ROUNDS = 5
MEMORY = "memory mode"
PRODUCER = "redis mode, read on the producer"
OTHER = "redis mode, read on another"


@dataclass
class Outcome:
    gaps_ms: list[float]
    events: int
    cpu_s: dict[str, float]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def one_stream(http: aiohttp.ClientSession, start_url: str, read_url: str, message: str) -> list[float]:
    async with http.post(start_url + "/chat/streams", json={"message": message}) as response:
        stream_id = (await response.json())["id"]
    arrivals: list[float] = []
    parser = SSEParser()
    async with http.get(f"{read_url}/chat/streams/{stream_id}") as response:
        async for chunk in response.content.iter_any():
            now = time.perf_counter()
            arrivals.extend(now for event in parser.feed(chunk) if event.event == "token")
    return [(b - a) * 1000 for a, b in itertools.pairwise(arrivals)]


async def run(start: Gateway, read: Gateway, pids: dict[str, int], streams: int, message: str) -> Outcome:
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        gaps = await asyncio.gather(*(one_stream(http, start.url, read.url, message) for _ in range(streams)))
    after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    flat = [gap for stream in gaps for gap in stream]
    return Outcome(flat, len(flat) + streams, {name: after[name] - before[name] for name in pids})


async def arrivals(http: aiohttp.ClientSession, url: str, stream_id: str) -> dict[str, float]:
    """When each token event of the stream arrived, by event id."""
    found: dict[str, float] = {}
    parser = SSEParser()
    async with http.get(f"{url}/chat/streams/{stream_id}") as response:
        async for chunk in response.content.iter_any():
            now = time.perf_counter()
            found.update((str(event.id), now) for event in parser.feed(chunk) if event.event == "token")
    return found


async def delays(producer: Gateway, other: Gateway, streams: int, message: str) -> list[float]:
    """Per event, in ms: its arrival through `other` minus its arrival through `producer`."""

    async def one(http: aiohttp.ClientSession) -> list[float]:
        async with http.post(producer.url + "/chat/streams", json={"message": message}) as response:
            stream_id = (await response.json())["id"]
        here, there = await asyncio.gather(
            arrivals(http, producer.url, stream_id), arrivals(http, other.url, stream_id)
        )
        return [(there[key] - here[key]) * 1000 for key in here if key in there]

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        found = await asyncio.gather(*(one(http) for _ in range(streams)))
    return [delay for stream in found for delay in stream]


def measure_delay(streams: int, tokens: int, gap_ms: float) -> list[float]:
    """Start the simulator, Redis and two instances; the per-event delays of `delays`."""
    simulator = start_simulator()
    redis = start_redis(Path(tempfile.mkdtemp(prefix="sluice-bench-redis-")))
    env = {"SLUICE_REDIS_URL": redis.url}
    started: list[Gateway] = []
    try:
        started += [start_gateway(upstream=simulator, env=env), start_gateway(upstream=simulator, env=env)]
        return asyncio.run(delays(started[0], started[1], streams, f"bench\n#sim tokens={tokens} gap_ms={gap_ms}"))
    finally:
        for gateway in started:
            gateway.process.stop()
        redis.stop()
        simulator.process.stop()


def figures(outcome: Outcome) -> dict[str, Any]:
    """The gap percentiles and CPU per event of one variant in one round, as plain data."""
    return {
        "events": outcome.events,
        "gap_p50_ms": percentile(outcome.gaps_ms, 0.5),
        "gap_p99_ms": percentile(outcome.gaps_ms, 0.99),
        "cpu_us_per_event": {who: seconds / outcome.events * 1e6 for who, seconds in outcome.cpu_s.items()},
    }


def summary(rounds: list[dict[str, Any]], base: list[dict[str, Any]]) -> dict[str, Any]:
    """One variant over every round (kept by `--json`): medians, each round, and the p99 it adds to `base`'s.

    The added p99 is taken round by round (each round runs the variants one after the other on the same
    processes) and its median kept: what the machine did meanwhile moves a round's figures by as
    much as the target, and mostly moves the variants of one round together.
    """
    added = [one["gap_p99_ms"] - other["gap_p99_ms"] for one, other in zip(rounds, base, strict=True)]
    whos = rounds[0]["cpu_us_per_event"]
    return {
        "events": sum(one["events"] for one in rounds),
        "gap_p50_ms": statistics.median(one["gap_p50_ms"] for one in rounds),
        "gap_p99_ms": statistics.median(one["gap_p99_ms"] for one in rounds),
        "added_gap_p99_ms": statistics.median(added),
        "cpu_us_per_event": {who: statistics.median(one["cpu_us_per_event"][who] for one in rounds) for who in whos},
        "rounds": [{**one, "added_gap_p99_ms": more} for one, more in zip(rounds, added, strict=True)],
    }


def line(name: str, variant: dict[str, Any]) -> str:
    """One variant's figures (of one round, or their medians) on one line."""
    cpu = ", ".join(f"{who} {us:.1f} us" for who, us in variant["cpu_us_per_event"].items())
    added = variant.get("added_gap_p99_ms", 0.0)
    return (
        f"{name:<34} gap p50 {variant['gap_p50_ms']:6.2f} ms  p99 {variant['gap_p99_ms']:6.2f} ms"
        f" (added {added:+5.2f})  CPU per event: {cpu}"
    )


def measure(
    streams: int, tokens: int, gap_ms: float, rounds: int = ROUNDS, *, show: bool = False
) -> dict[str, dict[str, Any]]:
    """Run the three variants in turn, `rounds` times on the same processes; their summaries by variant name."""
    message = f"bench\n#sim tokens={tokens} gap_ms={gap_ms}"
    simulator = start_simulator()
    redis = start_redis(Path(tempfile.mkdtemp(prefix="sluice-bench-redis-")))
    env = {"SLUICE_REDIS_URL": redis.url}
    started: list[Gateway] = []
    found: dict[str, list[dict[str, Any]]] = {MEMORY: [], PRODUCER: [], OTHER: []}
    try:
        memory = start_gateway(upstream=simulator)
        started.append(memory)
        first, second = start_gateway(upstream=simulator, env=env), start_gateway(upstream=simulator, env=env)
        started += [first, second]
        assert redis.process is not None
        variants = {
            MEMORY: (memory, memory, {"gateway": memory.process.pid}),
            PRODUCER: (first, first, {"producer": first.process.pid, "redis": redis.process.pid}),
            OTHER: (
                first,
                second,
                {"producer": first.process.pid, "reader": second.process.pid, "redis": redis.process.pid},
            ),
        }
        for index in range(rounds):
            for name, (start, read, pids) in variants.items():
                found[name].append(figures(asyncio.run(run(start, read, pids, streams, message))))
            if show:
                base = found[MEMORY][-1]["gap_p99_ms"]
                for name, taken in found.items():
                    added = taken[-1]["gap_p99_ms"] - base
                    print(f"round {index + 1}: " + line(name, {**taken[-1], "added_gap_p99_ms": added}), flush=True)
    finally:
        for gateway in started:
            gateway.process.stop()
        redis.stop()
        simulator.process.stop()
    return {name: summary(taken, found[MEMORY]) for name, taken in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_mode", description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=50, help="concurrent browser streams (default 50)")
    parser.add_argument("--tokens", type=int, default=200, help="tokens per stream (default 200)")
    parser.add_argument("--gap-ms", type=float, default=20.0, help="the upstream's pace (default 20 ms)")
    parser.add_argument(
        "--delay", action="store_true", help="measure instead how much later events arrive through another instance"
    )
    parser.add_argument(
        "--rounds", type=int, default=ROUNDS, help=f"rounds of the three variants in turn (default {ROUNDS})"
    )
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the figures as JSON here")
    args = parser.parse_args()
    print(f"{args.streams} streams x {args.tokens} tokens, upstream pace {args.gap_ms} ms")
    if args.delay:
        later = measure_delay(args.streams, args.tokens, args.gap_ms)
        quantiles = "  ".join(f"p{round(q * 100)} {percentile(later, q):.2f} ms" for q in (0.5, 0.9, 0.99))
        print(f"{len(later)} events, each read on its producer and on another instance at once: later by {quantiles}")
        return
    found = measure(args.streams, args.tokens, args.gap_ms, args.rounds, show=True)
    print(f"medians of {args.rounds} rounds:")
    for name, variant in found.items():
        print(line(name, variant))
    if args.json is not None:
        args.json.write_text(json.dumps(found, indent=2) + "\n")


if __name__ == "__main__":
    main()
