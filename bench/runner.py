"""Run one workload: a fresh upstream, the direct run, then a run through Sluice on each route."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import redis_mode
from .config import LoadConfig
from .processes import Service, Upstream, run_loadgen, start_gateway, start_passthrough, start_upstream
from .workloads import UPSTREAM_ROUTE, Kind, Workload

# Seconds between runs, for the previous run's connections to finish closing.
SETTLE_S = 0.3


@dataclass
class WorkloadResult:
    """The load generator's results of the direct run, the pass-through's and each Sluice route's, by path.

    `simulator_direct` is the same direct run against server/simulator, when the bench upstream
    served the others: it shows what the project's simulator would allow as an upstream.
    """

    workload: Workload
    upstream: Upstream
    direct: dict[str, Any]
    passthrough: dict[str, Any] | None = None
    sluice: dict[str, dict[str, Any]] = field(default_factory=dict)
    simulator_direct: dict[str, Any] | None = None
    # The redis-mode workload's figures by variant (bench/redis_mode.py); it has no other runs.
    redis_mode: dict[str, dict[str, Any]] | None = None

    @property
    def loadgen_runs(self) -> bool:
        """Whether the load generator ran this workload (direct, pass-through, Sluice's routes)."""
        return self.redis_mode is None


def say(message: str) -> None:
    """Progress, on stderr so that stdout carries only the table."""
    print(message, file=sys.stderr, flush=True)


def run_workload(workload: Workload, log_dir: Path, upstream_kind: Upstream) -> WorkloadResult:
    """Run `workload` straight against the upstream, through the pass-through, then through Sluice on each route."""
    if workload.kind is Kind.REDIS:
        say(f"[{workload.name}] memory mode, then Redis mode read here and elsewhere")
        figures = redis_mode.measure(workload.streams, workload.pace.tokens, workload.pace.gap_ms, workload.rounds)
        return WorkloadResult(workload, upstream_kind, direct={}, redis_mode=figures)
    upstream = start_upstream(upstream_kind, log_dir, f"{workload.name}-upstream-{upstream_kind}")
    gateway: Service | None = None
    try:
        result = WorkloadResult(workload, upstream_kind, _direct(workload, upstream, log_dir))
        result.passthrough = _passthrough(workload, upstream, log_dir)
        for route in workload.routes:
            if gateway is None or workload.fresh_gateway:
                if gateway is not None:
                    gateway.stop()
                name = f"{workload.name}-gateway{_slug(route.path)}"
                gateway = start_gateway(upstream, log_dir, name=name, workers=workload.workers)
            say(f"[{workload.name}] sluice {route.path}")
            watch = {"upstream": upstream.pid, "gateway": gateway.pid}
            config = workload.config(gateway.url, route, watch, upstream.url)
            result.sluice[route.path] = _run(workload, config, log_dir, f"sluice{_slug(route.path)}")
    finally:
        if gateway is not None:
            gateway.stop()
        upstream.stop()
    if workload.kind is Kind.THROUGHPUT and upstream_kind is Upstream.BENCH:
        simulator = start_upstream(Upstream.SIMULATOR, log_dir, f"{workload.name}-upstream-simulator")
        try:
            result.simulator_direct = _direct(workload, simulator, log_dir)
        finally:
            simulator.stop()
    return result


def _direct(workload: Workload, upstream: Service, log_dir: Path) -> dict[str, Any]:
    say(f"[{workload.name}] direct {upstream.name} {UPSTREAM_ROUTE.path}")
    config = workload.config(upstream.url, UPSTREAM_ROUTE, {"upstream": upstream.pid}, upstream.url)
    return _run(workload, config, log_dir, f"direct-{upstream.name}")


def _passthrough(workload: Workload, upstream: Service, log_dir: Path) -> dict[str, Any]:
    say(f"[{workload.name}] pass-through {UPSTREAM_ROUTE.path}")
    proxy = start_passthrough(upstream, log_dir, name=f"{workload.name}-passthrough")
    try:
        watch = {"upstream": upstream.pid, "gateway": proxy.pid}
        config = workload.config(proxy.url, UPSTREAM_ROUTE, watch, upstream.url)
        return _run(workload, config, log_dir, "passthrough")
    finally:
        proxy.stop()


def _run(workload: Workload, config: LoadConfig, log_dir: Path, label: str) -> dict[str, Any]:
    time.sleep(SETTLE_S)
    return run_loadgen(config, log_dir, f"{workload.name}-{label}-loadgen", timeout=workload.expected_s() * 3 + 60)


def _slug(path: str) -> str:
    return path.replace("/", "-")
