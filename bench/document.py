"""Write bench/RESULTS.md: the command, the machine, the date, the targets, every figure, the notes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .figures import Results, cpu_share, figures, others_share
from .processes import Upstream
from .report import (
    FIGURE_HEADERS,
    PROCESS_HEADERS,
    REDIS_HEADERS,
    VERDICT_HEADERS,
    figure_rows,
    markdown_table,
    process_rows,
    redis_rows,
    verdict_rows,
    verdicts,
)
from .runner import WorkloadResult
from .targets import REFERENCE_COLUMNS, REFERENCES

# Kept by hand across runs: before/after figures, profiles, and why a target is missed.
HISTORY = Path(__file__).resolve().parent / "HISTORY.md"

UPSTREAMS = {
    Upstream.BENCH: "`python -m bench.upstream`, a simulated upstream on `asyncio.Protocol` that sends "
    "the simulator's chunk bytes, one write per event, for a fraction of its CPU",
    Upstream.SIMULATOR: "`python -m server.simulator`, the project's simulated upstream",
}

HOW = """\
Four kinds of process, each its own: the simulated upstream ({upstream}),
the simplest aiohttp pass-through (`python -m bench.passthrough`, a reference that copies each
read of the upstream's reply to the client and nothing else), Sluice (`python run.py --config
config/test.toml`, one worker unless the workload says `--workers 2`,
`SLUICE_LOGGING_LEVEL=warning`) and the load generator (`python -m bench.loadgen`, uvloop). Every
workload runs first straight against the upstream's `/v1/chat/completions` ("direct"), then
through the pass-through, then through Sluice on each route, in the same invocation. The upstream
has no native route: its `/v1` streaming is the direct baseline of `/chat/stream` as well, and its
non-streaming `/v1` call that of `/chat`. On a shared machine, trust the ratios measured in the
same run (Sluice / pass-through, Sluice / direct) over absolute numbers.

- **TTFT** is measured by the client, from starting the request (including connecting, when the
  request needs a new connection) to the first read that holds a content token.
- **Events** are content tokens the clients received inside the measurement window;
  **proxy CPU per relayed event** is the proxy process's (Sluice's or the pass-through's) CPU time
  over the window divided by them, setup included.
- **Paced** workloads send one event every 10 or 100 ms, each flushed alone (TCP_NODELAY), so each
  arrives in a read of its own, as from a provider; `latency` and `throughput` send bursts.
- **Gaps** are the time between two reads that hold content tokens; a stream **stalled** when its
  largest gap exceeded twice the upstream's pace.
- **RSS per live stream** is (Sluice's highest RSS in the window − its RSS before the first stream)
  / the most streams the clients had open at once; each many-streams route gets a fresh gateway.
- **Stalled readers** read the headers and stop reading (64 KiB kernel receive buffer) while the
  upstream offers 1M tokens back to back; RSS per reader is read at a third and at the end of the
  stall, and again 1.5 s after they all left.
- **Crowd**: 100 clients send at the same instant (five times); "reached the upstream" compares
  each client's send time with the upstream's record of the request (`opened_at`, same clock).
- **Disconnect**: each client closes its connection 300 ms into a 4 s stream and notes `time.time()`;
  the upstream's record of that request (`GET /_sim/requests/{{id}}`: `closed_at`, same clock) says
  when the upstream stream ended. A stream still open 1 s later "ran on".
- CPU is each process's CPU-time clock over the window (to the nanosecond), in cores (100 % = one core
  busy); "others' CPU" is what the rest of the machine used meanwhile, which this benchmark does
  not control. Peak RSS is sampled every 50 ms.
- The load generator speaks HTTP/1.1 on `asyncio.Protocol` and scans each read with `bytes.count`,
  never parsing events, so it costs far less per chunk than the servers it drives.
"""


def render_markdown(results: Sequence[WorkloadResult], machine: dict[str, str], command: str, date: str) -> str:
    """The whole RESULTS.md."""
    mode = "quick (smoke-test sizes: figures not comparable)" if _quick(command) else "full"
    upstream = results[0].upstream if results else Upstream.BENCH
    redis = [result for result in results if not result.loadgen_runs]
    results = [result for result in results if result.loadgen_runs]
    parts = [
        "# Sluice benchmark results",
        f"Written by `{command}` on {date}, {mode}. Rerun the command to refresh this file.",
        "## Machine",
        markdown_table(["", ""], [[name, value] for name, value in machine.items()]),
        "## How it runs",
        HOW.format(upstream=UPSTREAMS[upstream]),
        "## Targets",
        markdown_table(VERDICT_HEADERS, verdict_rows(verdicts(results))),
        "## Figures",
        "Ratio is Sluice / direct; the last column is what Sluice adds.",
        markdown_table(FIGURE_HEADERS, figure_rows(results)),
        "## Processes",
        "CPU in cores over each run's window (100 % = one core busy); Sluice's kernel share in brackets.",
        markdown_table(PROCESS_HEADERS, process_rows(results)),
        *(_redis_section(redis) if redis else []),
        "## What the figures say about the instrument",
        "\n".join(f"- {note}" for note in notes(results)),
        "## Reference figures (measured on this machine by others, not by this benchmark)",
        markdown_table(["proxy", *REFERENCE_COLUMNS], [[name, *values] for name, values in REFERENCES]),
    ]
    if HISTORY.exists():
        parts.append(HISTORY.read_text().strip())
    return "\n\n".join(parts) + "\n"


def _redis_section(results: Sequence[WorkloadResult]) -> list[str]:
    workload = results[0].workload
    return [
        "## Redis mode",
        f"{workload.streams} concurrent browser streams of {workload.pace.tokens} tokens, one every "
        f"{workload.pace.gap_ms:g} ms (server/simulator), timed at the client by `bench/redis_mode.py`; "
        f"the three run in turn, {workload.rounds} rounds on the same processes; figures are the rounds' medians, "
        "and added gap p99 is the median of each round's p99 over memory mode's (target: ≤ 2 ms). CPU is "
        "each process's time on a core per event (its CPU-time clock, to the nanosecond).",
        markdown_table(REDIS_HEADERS, redis_rows(results)),
    ]


def notes(results: Sequence[WorkloadResult]) -> list[str]:
    """Observations derived from this run: load-generator headroom, upstream saturation, noise."""
    runs = [run for result in results for run in (result.direct, *result.sluice.values())]
    found = []
    if runs:
        busiest = max(cpu_share(run, "loadgen") or 0.0 for run in runs)
        found.append(f"The load generator used at most {busiest * 100:.0f} % of a core in any run.")
    throughput = next((r for r in results if r.workload.name == "throughput"), None)
    if throughput is not None:
        found.extend(_throughput_notes(throughput))
    noisy = [run for run in runs if others_share(run) > 0.25]
    if noisy:
        worst = max(others_share(run) for run in noisy)
        found.append(
            f"Other processes on this machine used more than 25 % of a core during {len(noisy)} of "
            f"{len(runs)} runs (at most {worst * 100:.0f} %): those figures carry their noise."
        )
    overflows = sum(run["listen_overflows"] for run in runs)
    if overflows:
        found.append(
            f"The kernel dropped {overflows:,} connection attempts at a full accept queue "
            "(a dropped SYN/ACK is retried after 1 s, which shows up in TTFT p99)."
        )
    return found


def _throughput_notes(result: WorkloadResult) -> list[str]:
    found = [_direct_note(f"{result.upstream} upstream", result.direct)]
    if result.simulator_direct is not None:
        found.append(_direct_note("simulator upstream (server/simulator)", result.simulator_direct))
        ratio = result.direct["chunks_in_window"] / max(1, result.simulator_direct["chunks_in_window"])
        found.append(
            f"Straight to the bench upstream, clients received {ratio:.1f}× the chunks/s they received "
            "straight from server/simulator: with the simulator as upstream, the direct figure would "
            "measure the simulator, not the clients' reach."
        )
    for path in result.sluice:
        chunks = next(f for f in figures(result, path) if f.key == "chunks_per_s")
        if chunks.ratio:
            found.append(
                f"Clients received {1 / chunks.ratio:.1f}× the chunks/s straight from the upstream "
                f"as through Sluice on {path}."
            )
    return found


def _direct_note(name: str, run: Results) -> str:
    upstream = cpu_share(run, "upstream") or 0.0
    loadgen = cpu_share(run, "loadgen") or 0.0
    figures = run["processes"]["upstream"]
    kernel = figures["sys_s"] / figures["cpu_s"] if figures["cpu_s"] else 0.0
    rate = run["chunks_in_window"] / run["window_s"]
    limited = " (a saturated core: the upstream limits this run)" if upstream >= 0.85 else ""
    return (
        f"Direct throughput run, {name}: {rate:,.0f} chunks/s with the upstream at {upstream * 100:.0f} % "
        f"of a core{limited}, {kernel * 100:.0f} % of it in the kernel sending one small segment per token, "
        f"and the load generator at {loadgen * 100:.0f} %."
    )


def _quick(command: str) -> bool:
    return "--quick" in command.split()
