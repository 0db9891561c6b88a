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
        return figure.sluice

    def met(self, value: float | None) -> bool | None:
        """True when `value` meets the target; None when it could not be measured."""
        if value is None:
            return None
        return value >= self.limit if self.at_least else value <= self.limit


TARGETS = (
    Target("latency", "ttft_p50_ms", "added TTFT p50, 1 client ≤ 1 ms", Measure.ADDED, 1.0),
    Target("throughput", "chunks_per_s", "throughput, 100 clients ≥ 0.5× direct chunks/s", Measure.RATIO, 0.5, True),
    Target("throughput", "cpu_us_per_chunk", "Sluice CPU per relayed chunk ≤ 8 µs", Measure.SLUICE, 8.0),
    Target("streams-1k", "errors", "1,000 streams at 100 ms pace: 0 errors", Measure.SLUICE, 0),
    Target("streams-1k", "stalls", "1,000 streams at 100 ms pace: 0 stalls", Measure.SLUICE, 0),
    Target("streams-1k", "ttft_p99_ms", "1,000 streams: added TTFT p99 ≤ 20 ms", Measure.ADDED, 20.0),
    Target("streams-5k", "errors", "5,000 streams: 0 errors", Measure.SLUICE, 0),
    Target("streams-5k", "rss_kib_per_stream", "5,000 streams: RSS ≤ 30 KiB per live stream", Measure.SLUICE, 30.0),
    Target("disconnect", "close_p99_ms", "client disconnect → upstream close p99 ≤ 10 ms", Measure.SLUICE, 10.0),
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
