"""The workloads, in full and quick sizes, and the load-generator config of each of their runs.

Every workload runs once straight against the upstream (the simulator's /v1/chat/completions)
and once through Sluice on each of its routes. The upstream has no native route, so its /v1
streaming is the direct baseline of /chat/stream as well, and its /v1 non-streaming call that of
/chat.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .config import Api, LoadConfig, Pace, Shape


class Kind(StrEnum):
    """What a workload measures, which decides its figures."""

    LATENCY = "latency"
    THROUGHPUT = "throughput"
    PACED = "paced"
    STREAMS = "streams"
    STALLED = "stalled"
    CROWD = "crowd"
    DISCONNECT = "disconnect"
    UNARY = "unary"
    REDIS = "redis"  # browser streams in memory mode and Redis mode (bench/redis_mode.py), no load generator


@dataclass(frozen=True, slots=True)
class Route:
    """A path and the request body it takes."""

    path: str
    api: Api


UPSTREAM_ROUTE = Route("/v1/chat/completions", Api.OPENAI)
STREAM_ROUTES = (Route("/v1/chat/completions", Api.OPENAI), Route("/chat/stream", Api.NATIVE))
UNARY_ROUTES = (Route("/v1/chat/completions", Api.OPENAI), Route("/chat", Api.NATIVE))


@dataclass(frozen=True, slots=True)
class Workload:
    """One workload: its traffic, and whether each route gets a gateway process of its own."""

    name: str
    kind: Kind
    title: str
    pace: Pace
    shape: Shape
    clients: int = 1
    warmup_s: float = 0.0
    duration_s: float = 0.0
    streams: int = 0
    ramp_s: float = 0.0
    leave_after_ms: float = 0.0
    hold_s: float = 0.0
    rounds: int = 1
    # A fresh gateway per route, so its idle RSS is not the high-water mark of the previous run.
    fresh_gateway: bool = False
    # Gateway worker processes (`run.py --workers`); the pass-through always runs one.
    workers: int = 1

    @property
    def stream(self) -> bool:
        """Whether the requests stream."""
        return self.kind is not Kind.UNARY

    @property
    def routes(self) -> tuple[Route, ...]:
        """Sluice's routes this workload runs on."""
        return STREAM_ROUTES if self.stream else UNARY_ROUTES

    def config(self, base_url: str, route: Route, watch: dict[str, int], sim_url: str) -> LoadConfig:
        """The load generator's config for one run against `base_url` on `route`."""
        return LoadConfig(
            url=base_url + route.path,
            api=route.api,
            stream=self.stream,
            pace=self.pace,
            shape=self.shape,
            clients=self.clients,
            warmup_s=self.warmup_s,
            duration_s=self.duration_s,
            streams=self.streams,
            ramp_s=self.ramp_s,
            leave_after_ms=self.leave_after_ms,
            hold_s=self.hold_s,
            rounds=self.rounds,
            sim_url=sim_url if self.kind in (Kind.DISCONNECT, Kind.CROWD) else None,
            watch=watch,
        )

    def expected_s(self) -> float:
        """Roughly how long one run takes, to bound it with a timeout."""
        stream_s = (self.pace.ttft_ms + self.pace.tokens * self.pace.gap_ms) / 1000
        if self.kind is Kind.STALLED:
            return self.hold_s + 20
        return self.warmup_s + self.duration_s + self.ramp_s + stream_s * 3 + self.rounds * 2 + 10


def workloads(quick: bool) -> list[Workload]:
    """Every workload, in the order they run; `quick` sizes them for a smoke test of a few seconds each."""
    paced = Pace(tokens=10 if quick else 64, gap_ms=100)
    warmup_s, duration_s = (0.2, 0.6) if quick else (1.0, 6.0)
    # Quick bursts are shorter: a run counts the streams sent inside its window, and on a loaded
    # machine (the test suite beside it) 256-token streams outlasted a 0.6 s window, so none was.
    burst_tokens = 64 if quick else 256
    return [
        Workload(
            "setup",
            Kind.LATENCY,
            "setup: 1 client, sequential 1-token streams, no delay",
            Pace(tokens=1),
            Shape.LOOP,
            clients=1,
            warmup_s=warmup_s,
            duration_s=duration_s,
        ),
        Workload(
            "latency",
            Kind.LATENCY,
            "burst, 1 client: sequential 64-token streams sent back to back",
            Pace(tokens=64),
            Shape.LOOP,
            clients=1,
            warmup_s=warmup_s,
            duration_s=duration_s,
        ),
        Workload(
            "throughput",
            Kind.THROUGHPUT,
            f"burst, 100 clients: {burst_tokens}-token streams sent back to back",
            Pace(tokens=burst_tokens),
            Shape.LOOP,
            clients=100,
            warmup_s=0.3 if quick else 1.0,
            duration_s=0.6 if quick else 8.0,
        ),
        _paced("paced-10ms", Pace(tokens=20 if quick else 200, gap_ms=10), quick),
        _paced("paced-100ms", Pace(tokens=5 if quick else 40, gap_ms=100), quick),
        _streams("streams-1k", 100 if quick else 1000, paced, ramp_s=0.3 if quick else 2.0),
        _streams("streams-5k", 300 if quick else 5000, paced, ramp_s=0.6 if quick else 5.0, workers=2),
        _stalled("stalled-20", 20, quick),
        _stalled("stalled-200", 40 if quick else 200, quick),
        Workload(
            "crowd",
            Kind.CROWD,
            "crowd: 100 clients arrive at once on 20 ms-paced streams and all leave 300 ms later",
            Pace(tokens=100, gap_ms=20),
            Shape.CROWD,
            streams=100,
            leave_after_ms=300,
            rounds=1 if quick else 5,
        ),
        Workload(
            "disconnect",
            Kind.DISCONNECT,
            "disconnect: 20 clients, each leaves 300 ms into a 4 s stream, one after another",
            Pace(tokens=40, gap_ms=100),
            Shape.LEAVE,
            clients=5 if quick else 20,
            warmup_s=0.2 if quick else 0.5,
            duration_s=1.0 if quick else 6.0,
            leave_after_ms=300,
        ),
        Workload(
            "unary",
            Kind.UNARY,
            "non-streaming: 100 clients, 64-token replies, no delay",
            Pace(tokens=64),
            Shape.LOOP,
            clients=100,
            warmup_s=0.3 if quick else 1.0,
            duration_s=0.6 if quick else 6.0,
        ),
        Workload(
            "redis-mode",
            Kind.REDIS,
            "Redis mode: concurrent browser streams (POST /chat/streams, then GET) at a 20 ms pace, in memory "
            "mode, then in Redis mode read on the producing instance and through another instance, in rounds",
            Pace(tokens=40 if quick else 200, gap_ms=20),
            Shape.LOOP,
            streams=10 if quick else 50,
            rounds=2 if quick else 5,
        ),
    ]


def _paced(name: str, pace: Pace, quick: bool) -> Workload:
    return Workload(
        name,
        Kind.PACED,
        f"paced: 20 clients, {pace.tokens}-token streams, one event every {pace.gap_ms:g} ms, each flushed alone",
        pace,
        Shape.LOOP,
        clients=20,
        warmup_s=0.3 if quick else 1.0,
        duration_s=0.8 if quick else 8.0,
    )


def _stalled(name: str, readers: int, quick: bool) -> Workload:
    return Workload(
        name,
        Kind.STALLED,
        f"stalled readers: {readers} clients read the headers of a 1M-token stream sent back to back, "
        "then stop reading; then all leave",
        Pace(tokens=1_000_000),
        Shape.STALL,
        streams=readers,
        hold_s=1.0 if quick else 3.0,
        fresh_gateway=True,
    )


def _streams(name: str, count: int, pace: Pace, ramp_s: float, workers: int = 1) -> Workload:
    on = "one worker" if workers == 1 else f"--workers {workers}"
    return Workload(
        name,
        Kind.STREAMS,
        f"many streams: {count:,} concurrent {pace.tokens}-token streams, a token every {pace.gap_ms:g} ms, "
        f"opened over {ramp_s:g} s, {on}",
        pace,
        Shape.WAVE,
        streams=count,
        ramp_s=ramp_s,
        fresh_gateway=True,
        workers=workers,
    )


WORKLOAD_NAMES = tuple(w.name for w in workloads(quick=False))
