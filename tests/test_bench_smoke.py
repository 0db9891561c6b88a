"""`python -m bench --quick` runs end to end and every request it sends succeeds.

A smoke test of the instrument, never of speed: it runs the benchmark once, in quick mode, and
checks what it did, not how fast anything was. It runs one workload of each kind (the kind decides
the code that drives and measures it); the others differ from those only in their sizes.
"""

from __future__ import annotations

import faulthandler
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.__main__ import DEFAULT_OUT, parse_args
from bench.loadgen import WARMUP_REQUESTS
from bench.sampling import Family, cpu_seconds
from bench.workloads import Kind, workloads

ROOT = Path(__file__).resolve().parents[1]
QUICK_RUN_TIMEOUT_S = 600
# The cheapest workload of each kind; streams-5k would add the only `--workers 2` gateway start.
SMOKE_WORKLOADS = (
    "setup",
    "throughput",
    "paced-10ms",
    "streams-1k",
    "stalled-20",
    "crowd",
    "disconnect",
    "unary",
    "redis-mode",
)
# The run starts some 30 processes one after another (about a minute and a half on 2 shared cores).
pytestmark = pytest.mark.timeout(QUICK_RUN_TIMEOUT_S + 60)


@dataclass
class QuickRun:
    """What one `python -m bench --quick` left behind."""

    returncode: int
    stdout: str
    stderr: str
    report: str
    raw: dict[str, Any]
    raw_path: Path

    def runs(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """(workload, run label, load-generator results) of every run."""
        for workload in self.raw["workloads"]:
            if workload["redis_mode"] is not None:
                continue  # no load generator: see test_redis_mode_is_measured_three_ways
            yield workload["name"], "direct", workload["direct"]
            yield workload["name"], "pass-through", workload["passthrough"]
            for path, run in workload["sluice"].items():
                yield workload["name"], path, run
            if workload["simulator_direct"] is not None:
                yield workload["name"], "direct to server/simulator", workload["simulator_direct"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> QuickRun:
    folder = tmp_path_factory.mktemp("bench")
    report, raw = folder / "RESULTS.md", folder / "results.json"
    chosen = [arg for name in SMOKE_WORKLOADS for arg in ("--workload", name)]
    argv = [sys.executable, "-m", "bench", "--quick", *chosen, "--out", str(report), "--json", str(raw)]
    # A run of a minute or two by design, bounded by its own timeout: pytest's hang dump
    # (faulthandler_timeout, 100 s) would print every thread's stack into a green run on a busy machine.
    faulthandler.cancel_dump_traceback_later()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=QUICK_RUN_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return QuickRun(done.returncode, done.stdout, done.stderr, report.read_text(), json.loads(raw.read_text()), raw)


def test_the_smoke_run_holds_a_workload_of_every_kind() -> None:
    by_name = {w.name: w for w in workloads(quick=True)}
    assert {by_name[name].kind for name in SMOKE_WORKLOADS} == set(Kind)


def test_every_smoke_workload_runs_direct_through_the_passthrough_and_both_routes(quick_run: QuickRun) -> None:
    ran = {w["name"]: w for w in quick_run.raw["workloads"]}
    assert tuple(ran) == SMOKE_WORKLOADS
    for name, workload in ran.items():
        if name == "redis-mode":
            continue
        expected = {"/v1/chat/completions", "/chat"} if name == "unary" else {"/v1/chat/completions", "/chat/stream"}
        assert set(workload["sluice"]) == expected, name
        assert workload["passthrough"] is not None, name


def test_redis_mode_is_measured_three_ways(quick_run: QuickRun) -> None:
    (variants,) = [w["redis_mode"] for w in quick_run.raw["workloads"] if w["name"] == "redis-mode"]
    assert list(variants) == ["memory mode", "redis mode, read on the producer", "redis mode, read on another"]
    for name, variant in variants.items():
        assert variant["events"] > 0, name
        assert variant["gap_p99_ms"] >= variant["gap_p50_ms"] > 0, name
        assert all(us > 0 for us in variant["cpu_us_per_event"].values()), name
    assert set(variants["redis mode, read on another"]["cpu_us_per_event"]) == {"producer", "reader", "redis"}
    assert all(len(variant["rounds"]) == 2 for variant in variants.values())
    assert "## Redis mode" in quick_run.report


def test_the_bench_counts_cpu_finer_than_a_clock_tick() -> None:
    # Redis spends less than a 10 ms tick per round of the quick run, and a paced window's proxy a few
    # dozen: a tick-counted clock read 0, or moved by a tenth between runs.
    # Five spins of 0.2 ms: a tick-counted clock sees each only when it happens to cross a tick.
    for _ in range(5):
        before = cpu_seconds(os.getpid())
        spin_until = time.thread_time() + 0.0002
        while time.thread_time() < spin_until:
            pass
        assert cpu_seconds(os.getpid()) > before


def test_the_windows_cpu_counts_finer_than_a_clock_tick() -> None:
    family = Family(os.getpid())
    for _ in range(5):
        before, _ = family.cpu()
        spin_until = time.thread_time() + 0.0002
        while time.thread_time() < spin_until:
            pass
        assert family.cpu()[0] > before


def test_every_request_succeeds(quick_run: QuickRun) -> None:
    for workload, label, run in quick_run.runs():
        assert run["errors"] == {}, (workload, label, run["error_examples"])
        assert run["sent"] > 0, (workload, label)
        assert run["ok"] == run["sent"], (workload, label)


def test_every_stream_delivers_content_and_every_leaver_is_seen_closing(quick_run: QuickRun) -> None:
    for workload, label, run in quick_run.runs():
        if workload == "unary":
            assert run["latency_ms"], (workload, label)
            continue
        if workload.startswith("stalled-"):
            # Every reader opened its stream and stopped reading; RSS was read while they stalled.
            assert run["stall"]["readers"] == run["sent"] - WARMUP_REQUESTS, (workload, label)
            assert run["stall"]["rss_held"] > 0, (workload, label)
            continue
        assert run["ttft_ms"], (workload, label)
        if workload in ("disconnect", "crowd"):
            # Each leaver's close was seen; how soon is a figure (and test_disconnect_bounds' proof),
            # which a loaded machine may stretch past the report's "ran on" second.
            assert run["disconnect"]["close_ms"], label
        if workload == "crowd":
            assert len(run["disconnect"]["reach_ms"]) == len(run["disconnect"]["close_ms"]), label


def test_cpu_and_memory_are_sampled_for_every_process(quick_run: QuickRun) -> None:
    for workload, label, run in quick_run.runs():
        # The pass-through's process is sampled in the gateway's role.
        roles = {"loadgen", "upstream"} if label.startswith("direct") else {"loadgen", "upstream", "gateway"}
        assert set(run["processes"]) == roles, (workload, label)
        for role, figures in run["processes"].items():
            assert figures["rss_peak"] >= figures["rss_idle"] > 0, (workload, label, role)


def test_report_names_the_command_the_machine_and_every_target(quick_run: QuickRun) -> None:
    report = quick_run.report
    assert "python -m bench --quick" in report
    for heading in ("## Machine", "## Targets", "## Figures", "## Processes", "## Reference figures"):
        assert heading in report
    assert "pass-through" in report
    assert "MISSED" in report or "met" in report
    assert "Sluice − direct" in quick_run.stdout


def test_report_renders_again_from_the_raw_results(quick_run: QuickRun, tmp_path: Path) -> None:
    again = tmp_path / "again.md"
    argv = [sys.executable, "-m", "bench", "--from-json", str(quick_run.raw_path), "--out", str(again)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    assert again.read_text() == quick_run.report


def test_quick_run_writes_its_report_to_a_temporary_folder_unless_asked_to_update() -> None:
    assert parse_args(["--quick"]).out != DEFAULT_OUT
    assert parse_args(["--quick", "--update"]).out == DEFAULT_OUT
    assert parse_args([]).out == DEFAULT_OUT
    assert parse_args(["--quick", "--out", "/tmp/x.md"]).out == Path("/tmp/x.md")
