"""Lay the figures out: a plain-text table for the terminal and bench/RESULTS.md."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .figures import Figure, Results, cpu_share, errors, figures, others_share
from .runner import WorkloadResult
from .targets import TARGETS, Target

Rows = list[list[str]]
MIB = 2**20


@dataclass(frozen=True, slots=True)
class Verdict:
    """One target on one route: the number it judges and whether it was met."""

    target: Target
    route: str
    value: float | None
    unit: str
    met: bool | None


def number(value: float | None, unit: str = "") -> str:
    """A figure with sensible precision and its unit; an em dash when there is none."""
    if value is None:
        return "—"
    magnitude = abs(value)
    if magnitude >= 100 or (value == int(value) and unit in ("", "/s")):
        text = f"{value:,.0f}"
    elif magnitude >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip() if unit and unit != "/s" else f"{text}{unit}"


def signed(value: float | None, unit: str) -> str:
    """A difference, always with its sign."""
    if value is None:
        return "—"
    text = number(value, unit)
    return text if text.startswith("-") else "+" + text


def ratio(value: float | None) -> str:
    """Sluice / direct."""
    return "—" if value is None else f"{value:.2f}×"


def figure_rows(results: Sequence[WorkloadResult]) -> Rows:
    """Workload, route, figure, direct, pass-through, Sluice, the two ratios, difference."""
    rows: Rows = []
    for result in results:
        for path in result.sluice:
            for figure in figures(result, path):
                rows.append(
                    [
                        result.workload.name,
                        path,
                        figure.label,
                        number(figure.direct, figure.unit),
                        number(figure.passthrough, figure.unit),
                        number(figure.sluice, figure.unit),
                        ratio(figure.ratio),
                        ratio(figure.vs_passthrough),
                        signed(figure.diff, figure.unit),
                    ]
                )
    return rows


FIGURE_HEADERS = [
    "workload",
    "Sluice route",
    "figure",
    "direct",
    "pass-through",
    "Sluice",
    "Sluice / direct",
    "Sluice / pass-through",
    "Sluice − direct",
]
PROCESS_HEADERS = [
    "workload",
    "run",
    "window",
    "ok / sent",
    "errors",
    "loadgen CPU",
    "upstream CPU",
    "proxy CPU (kernel)",
    "others' CPU",
    "peak RSS loadgen / upstream / proxy",
]


def process_rows(results: Sequence[WorkloadResult]) -> Rows:
    """Per run: requests, errors, CPU of each process in cores, and peak RSS."""
    rows: Rows = []
    for result in results:
        runs = [(f"direct ({result.upstream} upstream)", result.direct)]
        if result.passthrough is not None:
            runs.append(("pass-through /v1/chat/completions", result.passthrough))
        runs += [(f"Sluice {path}", run) for path, run in result.sluice.items()]
        if result.simulator_direct is not None:
            runs.append(("direct (simulator upstream)", result.simulator_direct))
        for label, run in runs:
            processes = run["processes"]
            gateway = processes.get("gateway")
            gateway_cpu = "—"
            if gateway is not None:
                gateway_cpu = f"{_cores(cpu_share(run, 'gateway'))} ({_cores(gateway['sys_s'] / run['cpu_window_s'])})"
            rss = " / ".join(
                "—" if role not in processes else f"{processes[role]['rss_peak'] / MIB:.0f}"
                for role in ("loadgen", "upstream", "gateway")
            )
            rows.append(
                [
                    result.workload.name,
                    label,
                    f"{run['window_s']:.1f} s",
                    f"{run['ok']:,} / {run['sent']:,}",
                    _errors(run),
                    _cores(cpu_share(run, "loadgen")),
                    _cores(cpu_share(run, "upstream")),
                    gateway_cpu,
                    _cores(others_share(run)),
                    f"{rss} MiB",
                ]
            )
    return rows


def verdicts(results: Sequence[WorkloadResult]) -> list[Verdict]:
    """Every target on every route of the workloads that ran."""
    by_name = {result.workload.name: result for result in results}
    found: list[Verdict] = []
    for target in TARGETS:
        result = by_name.get(target.workload)
        if result is None:
            continue
        for path in result.sluice:
            figure = _find(figures(result, path), target.key)
            unit = "×" if target.measure in ("ratio", "vs_passthrough") else figure.unit
            value = target.value(figure)
            found.append(Verdict(target, path, value, unit, target.met(value)))
    return found


def verdict_rows(found: Sequence[Verdict]) -> Rows:
    """Target, route, measured, met or missed."""
    rows: Rows = []
    for verdict in found:
        if verdict.unit == "×":
            measured = ratio(verdict.value)
        elif verdict.target.measure == "added":
            measured = signed(verdict.value, verdict.unit)
        else:
            measured = number(verdict.value, verdict.unit)
        outcome = {True: "met", False: "MISSED", None: "not measured"}[verdict.met]
        rows.append([verdict.target.text, verdict.route, measured, outcome])
    return rows


VERDICT_HEADERS = ["target", "Sluice route", "measured", "verdict"]


def text_table(headers: Sequence[str], rows: Rows) -> str:
    """Columns padded to their widest cell."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * width for width in widths))
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(headers: Sequence[str], rows: Rows) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


REDIS_HEADERS = ["variant", "events", "gap p50", "gap p99", "added gap p99", "CPU per event"]


def redis_rows(results: Sequence[WorkloadResult]) -> Rows:
    """Per variant of the redis-mode workload: gaps between token events, and CPU per event by process."""
    rows: Rows = []
    for result in results:
        variants = result.redis_mode or {}
        base = variants.get("memory mode", {}).get("gap_p99_ms")
        for name, variant in variants.items():
            cpu = ", ".join(f"{who} {number(us, 'µs')}" for who, us in variant["cpu_us_per_event"].items())
            p99 = variant["gap_p99_ms"]
            added = None if base is None or name == "memory mode" else p99 - base
            # The median of the rounds' added p99, where measured in rounds (bench/redis_mode.py).
            added = variant.get("added_gap_p99_ms", added) if added is not None else None
            p50 = number(variant["gap_p50_ms"], "ms")
            rows.append([name, f"{variant['events']:,}", p50, number(p99, "ms"), signed(added, "ms"), cpu])
    return rows


def render_text(results: Sequence[WorkloadResult]) -> str:
    """What `python -m bench` prints."""
    measured = [result for result in results if result.loadgen_runs]
    tables = []
    if measured:
        tables += [
            text_table(FIGURE_HEADERS, figure_rows(measured)),
            text_table(PROCESS_HEADERS, process_rows(measured)),
            text_table(VERDICT_HEADERS, verdict_rows(verdicts(measured))),
        ]
    if len(measured) < len(results):
        tables.append(text_table(REDIS_HEADERS, redis_rows(results)))
    return "\n\n".join(tables)


def _find(found: Sequence[Figure], key: str) -> Figure:
    for figure in found:
        if figure.key == key:
            return figure
    raise KeyError(key)


def _cores(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.0f} %"


def _errors(run: Results) -> str:
    count = errors(run)
    if not count:
        return "0"
    return f"{count:,} (" + ", ".join(f"{kind}: {n}" for kind, n in sorted(run["errors"].items())) + ")"
