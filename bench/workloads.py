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
    STREAMS = "streams"
    DISCONNECT = "disconnect"
    UNARY = "unary"


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
    # A fresh gateway per route, so its idle RSS is not the high-water mark of the previous run.
    fresh_gateway: bool = False

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
            sim_url=sim_url if self.kind is Kind.DISCONNECT else None,
            watch=watch,
        )

    def expected_s(self) -> float:
        """Roughly how long one run takes, to bound it with a timeout."""
        stream_s = (self.pace.ttft_ms + self.pace.tokens * self.pace.gap_ms) / 1000
        return self.warmup_s + self.duration_s + self.ramp_s + stream_s * 3 + 10


def workloads(quick: bool) -> list[Workload]:
    """Every workload, in the order they run; `quick` sizes them for a smoke test of a few seconds each."""
    paced = Pace(tokens=10 if quick else 64, gap_ms=100)
    return [
        Workload(
            "latency",
            Kind.LATENCY,
            "latency floor: 1 client, sequential 64-token streams, no delay",
            Pace(tokens=64),
            Shape.LOOP,
            clients=1,
            warmup_s=0.2 if quick else 1.0,
            duration_s=0.7 if quick else 6.0,
        ),
        Workload(
            "throughput",
            Kind.THROUGHPUT,
            "throughput: 100 clients, 256-token streams, no delay",
            Pace(tokens=256),
            Shape.LOOP,
            clients=100,
            warmup_s=0.3 if quick else 1.0,
            duration_s=0.7 if quick else 8.0,
        ),
        _streams("streams-1k", 100 if quick else 1000, paced, ramp_s=0.3 if quick else 2.0),
        _streams("streams-5k", 300 if quick else 5000, paced, ramp_s=0.6 if quick else 5.0),
        Workload(
            "disconnect",
            Kind.DISCONNECT,
            "disconnect: clients leave 300 ms into a 4 s stream",
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
            duration_s=0.7 if quick else 6.0,
        ),
    ]


def _streams(name: str, count: int, pace: Pace, ramp_s: float) -> Workload:
    return Workload(
        name,
        Kind.STREAMS,
        f"many streams: {count:,} concurrent {pace.tokens}-token streams, a token every {pace.gap_ms:g} ms, "
        f"opened over {ramp_s:g} s",
        pace,
        Shape.WAVE,
        streams=count,
        ramp_s=ramp_s,
        fresh_gateway=True,
    )


WORKLOAD_NAMES = tuple(w.name for w in workloads(quick=False))
