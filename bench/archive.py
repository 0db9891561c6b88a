"""Keep a benchmark's raw results as JSON (`--json`), and load them back to re-render (`--from-json`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .processes import Upstream
from .runner import WorkloadResult
from .workloads import workloads


def save(path: Path, results: list[WorkloadResult], command: str, date: str, machine: dict[str, str]) -> None:
    """Write every run's load-generator results, with what is needed to render them again."""
    raw = {
        "command": command,
        "date": date,
        "machine": machine,
        "workloads": [
            {
                "name": result.workload.name,
                "upstream": str(result.upstream),
                "direct": result.direct,
                "passthrough": result.passthrough,
                "sluice": result.sluice,
                "simulator_direct": result.simulator_direct,
                "redis_mode": result.redis_mode,
            }
            for result in results
        ],
    }
    path.write_text(json.dumps(raw, indent=1))


def load(path: Path) -> tuple[list[WorkloadResult], str, str, dict[str, str]]:
    """(results, command, date, machine) as `save` wrote them."""
    raw: dict[str, Any] = json.loads(path.read_text())
    command: str = raw["command"]
    by_name = {w.name: w for w in workloads(quick="--quick" in command.split())}
    results = [
        WorkloadResult(
            workload=by_name[entry["name"]],
            upstream=Upstream(entry["upstream"]),
            direct=entry["direct"],
            passthrough=entry.get("passthrough"),
            sluice=entry["sluice"],
            simulator_direct=entry["simulator_direct"],
            redis_mode=entry.get("redis_mode"),
        )
        for entry in raw["workloads"]
    ]
    return results, command, raw["date"], raw["machine"]
