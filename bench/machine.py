"""Describe the machine a benchmark ran on: cores, CPU model, memory, Python and library versions."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import psutil

LIBRARIES = ("aiohttp", "uvloop", "openai", "orjson", "psutil")


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe() -> dict[str, str]:
    """Name → value, in display order."""
    load1, load5, _ = os.getloadavg()
    facts = {
        "cores": str(os.cpu_count()),
        "CPU": cpu_model(),
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
    }
    for name in LIBRARIES:
        try:
            facts[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            facts[name] = "not installed"
    facts["load average at start (1 min, 5 min)"] = f"{load1:.2f}, {load5:.2f}"
    facts["Sluice revision"] = sluice_revision()
    return facts


def sluice_revision() -> str:
    """The commit the gateway ran from, and whether its code had uncommitted changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = _git(root, "rev-parse", "--short", "HEAD")
        changed = _git(root, "status", "--porcelain", "--", "server", "run.py", "config")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{commit} with uncommitted changes to server/, run.py or config/" if changed else commit


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=10)
    return done.stdout.strip()
