"""Turn the load generator's raw results into the table's figures: percentiles, rates, per-chunk costs."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from .runner import WorkloadResult
from .workloads import Kind, Workload

Results = dict[str, Any]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation between ranks; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True, slots=True)
class Figure:
    """One line of the table: a measure of the direct run, the pass-through's and Sluice's."""

    key: str
    label: str
    unit: str
    direct: float | None
    sluice: float | None
    higher_is_better: bool = False
    passthrough: float | None = None

    @property
    def vs_passthrough(self) -> float | None:
        """Sluice / the pass-through."""
        if self.passthrough is None or self.sluice is None or self.passthrough == 0:
            return None
        return self.sluice / self.passthrough

    @property
    def ratio(self) -> float | None:
        """Sluice / direct."""
        if self.direct is None or self.sluice is None or self.direct == 0:
            return None
        return self.sluice / self.direct

    @property
    def diff(self) -> float | None:
        """Sluice minus direct: what the gateway adds (or takes away)."""
        if self.direct is None or self.sluice is None:
            return None
        return self.sluice - self.direct


def errors(results: Results) -> int:
    """Requests of the run that failed, warm-up included."""
    return sum(results["errors"].values())


def cpu_share(results: Results, role: str) -> float | None:
    """CPU seconds of `role` per second of the window (1.0 = one core busy)."""
    figures = results["processes"].get(role)
    return None if figures is None else float(figures["cpu_s"]) / float(results["cpu_window_s"])


def others_share(results: Results) -> float:
    """CPU the rest of the machine used during the window, in cores: other tenants of the machine."""
    ours = sum(float(p["cpu_s"]) for p in results["processes"].values())
    return max(0.0, float(results["system_busy_s"]) - ours) / float(results["cpu_window_s"])


def _per_s(key: str) -> Callable[[Results], float]:
    return lambda results: float(results[key]) / results["window_s"]


def _cpu_us_per_request(results: Results) -> float | None:
    gateway = results["processes"].get("gateway")
    if gateway is None or not results["completed_in_window"]:
        return None
    return float(gateway["cpu_s"]) / float(results["completed_in_window"]) * 1e6


def _rss_kib_per_stream(results: Results) -> float | None:
    gateway = results["processes"].get("gateway")
    if gateway is None or not results["peak_live"]:
        return None
    return float(gateway["rss_peak"] - gateway["rss_idle"]) / float(results["peak_live"]) / 1024


def _cpu_us_per_event(results: Results) -> float | None:
    gateway = results["processes"].get("gateway")
    if gateway is None or not results["chunks_in_window"]:
        return None
    return float(gateway["cpu_s"]) / float(results["chunks_in_window"]) * 1e6


def _stall(key: str) -> Callable[[Results], float | None]:
    def measure(results: Results) -> float | None:
        stall = results.get("stall")
        if stall is None or stall["role"] != "gateway" or not stall["readers"]:
            return None
        readers = float(stall["readers"])
        idle, early, held, after = (float(stall[k]) for k in ("rss_idle", "rss_early", "rss_held", "rss_after"))
        if key == "per_reader":
            return (held - idle) / readers / 1024
        if key == "growth":
            return (held - early) / readers / 1024
        return (after - idle) / 2**20

    return measure


def _readers(results: Results) -> float | None:
    stall = results.get("stall")
    return None if stall is None else float(stall["readers"])


def _reach(q: float) -> Callable[[Results], float | None]:
    return lambda results: percentile(results["disconnect"]["reach_ms"], q)


def _late(limit_ms: float) -> Callable[[Results], float]:
    def measure(results: Results) -> float:
        disconnect = results["disconnect"]
        on_time = sum(1 for ms in disconnect["reach_ms"] if ms <= limit_ms)
        return float(len(disconnect["close_ms"]) + disconnect["never_closed"] - on_time)

    return measure


def _stalls(workload: Workload) -> Callable[[Results], float]:
    limit_ms = 2 * workload.pace.gap_ms
    return lambda results: sum(1 for gap in results["max_gap_ms"] if gap > limit_ms)


def _close(q: float) -> Callable[[Results], float | None]:
    return lambda results: percentile(results["disconnect"]["close_ms"], q)


def _left(results: Results) -> float:
    disconnect = results["disconnect"]
    return float(len(disconnect["close_ms"]) + disconnect["never_closed"])


def _pct(key: str, q: float) -> Callable[[Results], float | None]:
    return lambda results: percentile(results[key], q)


class Spec(NamedTuple):
    """How to compute one figure from a run's results."""

    key: str
    label: str
    unit: str
    measure: Callable[[Results], float | None]
    higher_is_better: bool = False
    proxy_only: bool = False  # a figure of the proxy's own process: none for the direct run


def _specs(workload: Workload) -> list[Spec]:
    kind = workload.kind
    ttft = [
        Spec("ttft_p50_ms", "TTFT p50", "ms", _pct("ttft_ms", 50)),
        Spec("ttft_p99_ms", "TTFT p99", "ms", _pct("ttft_ms", 99)),
    ]
    completed = _per_s("completed_in_window")
    per_event = Spec("cpu_us_per_chunk", "proxy CPU per relayed event", "µs", _cpu_us_per_event, proxy_only=True)
    with_setup = per_event._replace(label="proxy CPU per relayed event, with setup")
    stalls = Spec("stalls", f"stalled streams (gap > {2 * workload.pace.gap_ms:g} ms)", "", _stalls(workload))
    if kind is Kind.LATENCY:
        return [
            *ttft,
            Spec("streams_per_s", "streams completed", "/s", completed, higher_is_better=True),
            Spec("cpu_us_per_request", "proxy CPU per stream", "µs", _cpu_us_per_request, proxy_only=True),
            per_event,
        ]
    if kind is Kind.THROUGHPUT:
        return [
            Spec("chunks_per_s", "content chunks", "/s", _per_s("chunks_in_window"), higher_is_better=True),
            Spec("streams_per_s", "streams completed", "/s", completed, higher_is_better=True),
            per_event,
        ]
    if kind is Kind.PACED:
        return [
            Spec("errors", "failed streams", "", errors),
            *ttft,
            Spec("gap_p99_ms", "largest gap between events p99", "ms", _pct("max_gap_ms", 99)),
            stalls,
            per_event,
        ]
    if kind is Kind.STREAMS:
        return [
            Spec("errors", "failed streams", "", errors),
            Spec("peak_live", "streams open at once, at most", "", lambda r: r["peak_live"], higher_is_better=True),
            *ttft,
            Spec("gap_p99_ms", "largest gap between chunks p99", "ms", _pct("max_gap_ms", 99)),
            stalls,
            Spec("rss_kib_per_stream", "proxy RSS per live stream", "KiB", _rss_kib_per_stream, proxy_only=True),
            with_setup,
            Spec("listen_overflows", "connections dropped, accept queue full", "", lambda r: r["listen_overflows"]),
        ]
    if kind is Kind.STALLED:
        return [
            Spec("readers", "stalled readers held open", "", _readers, higher_is_better=True),
            Spec("rss_kib_per_reader", "proxy RSS per stalled reader", "KiB", _stall("per_reader"), proxy_only=True),
            Spec(
                "rss_growth_kib_per_reader",
                "its growth over the last 2/3 of the stall",
                "KiB",
                _stall("growth"),
                proxy_only=True,
            ),
            Spec("rss_after_mib", "proxy RSS still held after they left", "MiB", _stall("after"), proxy_only=True),
        ]
    if kind is Kind.CROWD:
        return [
            Spec("left", "streams left by their client", "", _left, higher_is_better=True),
            Spec("reach_p50_ms", "client sent → upstream saw it p50", "ms", _reach(50)),
            Spec("reach_p99_ms", "client sent → upstream saw it p99", "ms", _reach(99)),
            Spec("late_arrivals", "requests that reached the upstream after 100 ms", "", _late(100.0)),
            Spec("close_p50_ms", "client left → upstream closed p50", "ms", _close(50)),
            Spec("close_p99_ms", "client left → upstream closed p99", "ms", _close(99)),
            Spec("close_max_ms", "client left → upstream closed max", "ms", _close(100)),
            with_setup,
        ]
    if kind is Kind.DISCONNECT:
        return [
            Spec("left", "streams left by their client", "", _left, higher_is_better=True),
            Spec("close_p50_ms", "client left → upstream closed p50", "ms", _close(50)),
            Spec("close_p99_ms", "client left → upstream closed p99", "ms", _close(99)),
            Spec("close_max_ms", "client left → upstream closed max", "ms", _close(100)),
            Spec("ran_on", "upstream streams that ran on (> 1 s)", "", lambda r: r["disconnect"]["ran_on"]),
        ]
    return [
        Spec("latency_p50_ms", "latency p50", "ms", _pct("latency_ms", 50)),
        Spec("latency_p99_ms", "latency p99", "ms", _pct("latency_ms", 99)),
        Spec("requests_per_s", "requests completed", "/s", completed, higher_is_better=True),
        Spec("cpu_us_per_request", "proxy CPU per request", "µs", _cpu_us_per_request, proxy_only=True),
    ]


def figures(result: WorkloadResult, path: str) -> list[Figure]:
    """The figures of `result`'s run through Sluice on `path`, each beside the direct run and the pass-through."""
    sluice = result.sluice[path]
    rows = []
    for spec in _specs(result.workload):
        direct = None if spec.proxy_only else _number(spec.measure(result.direct))
        passthrough = None if result.passthrough is None else _number(spec.measure(result.passthrough))
        sluiced = _number(spec.measure(sluice))
        rows.append(Figure(spec.key, spec.label, spec.unit, direct, sluiced, spec.higher_is_better, passthrough))
    return rows


def _number(value: float | None) -> float | None:
    return None if value is None else float(value)
