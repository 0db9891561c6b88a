"""The targets Sluice is held to, and reference figures others measured on this machine."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .figures import Figure


class Measure(StrEnum):
    """Which number of a figure a target judges."""

    ADDED = "added"  # Sluice minus direct
    RATIO = "ratio"  # Sluice / direct
    SLUICE = "sluice"  # Sluice's own figure
    VS_PASSTHROUGH = "vs_passthrough"  # Sluice / the simplest aiohttp pass-through, same run


@dataclass(frozen=True, slots=True)
class Target:
    """`measure` of figure `key` of workload `workload` must be at most (or at least) `limit`."""

    workload: str
    key: str
    text: str
    measure: Measure
    limit: float
    at_least: bool = False

    def value(self, figure: Figure) -> float | None:
        """The number this target judges."""
        if self.measure is Measure.ADDED:
            return figure.diff
        if self.measure is Measure.RATIO:
            return figure.ratio
        if self.measure is Measure.VS_PASSTHROUGH:
            return figure.vs_passthrough
        return figure.sluice

    def met(self, value: float | None) -> bool | None:
        """True when `value` meets the target; None when it could not be measured."""
        if value is None:
            return None
        return value >= self.limit if self.at_least else value <= self.limit


VS_PASS = Measure.VS_PASSTHROUGH
TARGETS = (
    # 1. Setup: cheaper than the barest proxy, and no first token waiting for the rest of a burst.
    Target("setup", "cpu_us_per_request", "CPU per 1-token stream ≤ 1.0× pass-through", Measure.VS_PASSTHROUGH, 1.0),
    Target("setup", "ttft_p50_ms", "added TTFT p50, 1 client, 1-token streams ≤ 1 ms", Measure.ADDED, 1.0),
    Target("latency", "ttft_p50_ms", "added TTFT p50, 1 client, 64-token burst ≤ 1 ms", Measure.ADDED, 1.0),
    # 2. Per event, paced.
    Target("paced-10ms", "cpu_us_per_chunk", "CPU per event, 10 ms pace ≤ 1.0× pass-through", VS_PASS, 1.0),
    Target("paced-100ms", "cpu_us_per_chunk", "CPU per event, 100 ms pace ≤ 1.0× pass-through", VS_PASS, 1.0),
    # 3. and 4. Many streams.
    Target("streams-1k", "errors", "1,000 streams at 100 ms pace: 0 errors", Measure.SLUICE, 0),
    Target("streams-1k", "stalls", "1,000 streams at 100 ms pace: 0 stalls", Measure.SLUICE, 0),
    Target("streams-1k", "ttft_p99_ms", "1,000 streams: added TTFT p99 ≤ 20 ms", Measure.ADDED, 20.0),
    Target("streams-1k", "rss_kib_per_stream", "a live paced stream: RSS ≤ 24 KiB", Measure.SLUICE, 24.0),
    Target("streams-5k", "errors", "5,000 streams, --workers 2: 0 errors", Measure.SLUICE, 0),
    Target("streams-5k", "stalls", "5,000 streams, --workers 2: 0 stalls", Measure.SLUICE, 0),
    Target("streams-5k", "ttft_p99_ms", "5,000 streams, --workers 2: added TTFT p99 ≤ 100 ms", Measure.ADDED, 100.0),
    # 5. Memory.
    Target("stalled-20", "rss_kib_per_reader", "20 stalled readers: RSS ≤ 256 KiB each", Measure.SLUICE, 256.0),
    Target("stalled-200", "rss_kib_per_reader", "200 stalled readers: RSS ≤ 256 KiB each", Measure.SLUICE, 256.0),
    Target(
        "stalled-200",
        "rss_after_mib",
        "200 stalled readers left: RSS back within 10 MiB",
        Measure.SLUICE,
        10.0,
    ),
    # 6. Crowds.
    Target("crowd", "late_arrivals", "100 arriving at once: all reach the upstream within 100 ms", Measure.SLUICE, 0),
    Target("crowd", "close_p99_ms", "100 leaving at once: upstream closed p99 ≤ 10 ms", Measure.SLUICE, 10.0),
    Target("disconnect", "close_p99_ms", "one leaving at a time: upstream closed p99 ≤ 10 ms", Measure.SLUICE, 10.0),
    # No regression on bursts.
    Target("throughput", "chunks_per_s", "burst throughput, 100 clients ≥ 0.5× direct", Measure.RATIO, 0.5, True),
    Target("throughput", "cpu_us_per_chunk", "burst: CPU per relayed event ≤ 8 µs", Measure.SLUICE, 8.0),
)

# Measured on this machine by others with the same workloads; not measured by this benchmark.
REFERENCE_COLUMNS = (
    "added TTFT (1 client)",
    "throughput vs direct",
    "CPU per chunk",
    "added TTFT p99, 1k streams",
    "disconnect → upstream close",
)
REFERENCES = (
    ("bare aiohttp byte pass-through", ("+0.7 ms", "0.54×", "6 µs", "+125 ms", "p99 149 ms")),
    ("LiteLLM proxy 1.106", ("+25 ms", "0.003×", "1,400 µs", "36 % of streams timed out", "~5 s")),
    ("Portkey 1.15", ("+30 ms", "0.12×", "34 µs", "—", "never closes the upstream")),
)
