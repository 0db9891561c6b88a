"""Sample the CPU time and RSS of the processes under test, at window edges and periodically.

CPU time is read from each process's CPU-time clock (Linux's `clock_getcpuclockid`), to the
nanosecond, threads that already exited included; psutil's user and system times count clock ticks
(10 ms), which made the CPU per event of a paced window (a few dozen ticks) move by a tenth between
runs. The kernel's share is still psutil's, in ticks: a column for reading, never a target.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

# Seconds between RSS samples while a window is open.
RSS_INTERVAL = 0.05


@dataclass(slots=True)
class ProcessFigures:
    """One process over one window: CPU seconds used (of which in the kernel), RSS before it opened, highest RSS."""

    cpu_s: float = 0.0
    sys_s: float = 0.0
    rss_idle: int = 0
    rss_peak: int = 0

    def to_json(self) -> dict[str, float | int]:
        """The figures as a JSON object."""
        return {"cpu_s": self.cpu_s, "sys_s": self.sys_s, "rss_idle": self.rss_idle, "rss_peak": self.rss_peak}


class Family:
    """A process and its children (a `--workers` supervisor and its workers), summed."""

    def __init__(self, pid: int) -> None:
        parent = psutil.Process(pid)
        self.members = [parent, *parent.children(recursive=True)]

    def cpu(self) -> tuple[float, float]:
        """(user + system, system) CPU seconds of every member."""
        total = kernel = 0.0
        for member in self.members:
            with member.oneshot():
                used, sys_s = _cpu(member)
            total += used
            kernel += sys_s
        return total, kernel

    def rss(self) -> int:
        """The RSS of every member, summed."""
        return sum(member.memory_info().rss for member in self.members)


class Watch:
    """The processes of one run by role, "loadgen" (this process) always among them."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._processes = {role: Family(pid) for role, pid in pids.items()}
        self._processes["loadgen"] = Family(os.getpid())
        self.figures = {role: ProcessFigures() for role in self._processes}
        self._cpu_at_open: dict[str, tuple[float, float]] = {}
        self._system_at_open = 0.0
        self._overflows_at_open = 0
        self.system_busy_s = 0.0
        self.listen_overflows = 0
        self._task: asyncio.Task[None] | None = None
        self._opened_at: float | None = None
        self.span_s = 0.0

    def open(self) -> None:
        """Start the window: note CPU times and idle RSS, and start sampling RSS."""
        self._opened_at = time.perf_counter()
        for role, process in self._processes.items():
            self._cpu_at_open[role] = process.cpu()
            rss = process.rss()
            self.figures[role].rss_idle = self.figures[role].rss_peak = rss
        self._system_at_open = _system_busy()
        self._overflows_at_open = _listen_overflows()
        self._task = asyncio.get_running_loop().create_task(self._sample_rss())

    def stop(self) -> None:
        """End the window: CPU used since `open`, and a last RSS sample. Only the first call counts."""
        if self._opened_at is None or self._task is None:
            return
        self.span_s = time.perf_counter() - self._opened_at
        for role, process in self._processes.items():
            total, kernel = process.cpu()
            total_before, kernel_before = self._cpu_at_open[role]
            self.figures[role].cpu_s = total - total_before
            self.figures[role].sys_s = kernel - kernel_before
        self.system_busy_s = _system_busy() - self._system_at_open
        self.listen_overflows = _listen_overflows() - self._overflows_at_open
        self._note_rss()
        self._task.cancel()
        self._task = None

    async def _sample_rss(self) -> None:
        while True:
            self._note_rss()
            await asyncio.sleep(RSS_INTERVAL)

    def rss(self, role: str) -> int:
        """The current RSS of `role`, summed over its processes."""
        return self._processes[role].rss()

    def _note_rss(self) -> None:
        for role, process in self._processes.items():
            rss = process.rss()
            if rss > self.figures[role].rss_peak:
                self.figures[role].rss_peak = rss


def _cpu(process: psutil.Process) -> tuple[float, float]:
    """(user + system, system) CPU seconds of `process`: the first to the nanosecond, the second in ticks."""
    times = process.cpu_times()
    return cpu_seconds(process.pid, float(times.user + times.system)), float(times.system)


def cpu_seconds(pid: int, ticked: float | None = None) -> float:
    """CPU seconds process `pid` has run, all its threads, from its CPU-time clock.

    `ticked` (or psutil's) stands in where that clock cannot be read (not Linux, or the process is gone).
    """
    # glibc's clock_getcpuclockid(pid): the process-wide scheduler clock (CPUCLOCK_SCHED = 2) of `pid`.
    try:
        return time.clock_gettime((~pid << 3) | 2)
    except (OSError, OverflowError):
        if ticked is not None:
            return ticked
        times = psutil.Process(pid).cpu_times()
        return float(times.user + times.system)


def _system_busy() -> float:
    """CPU seconds the whole machine has spent running anything since boot (all cores together)."""
    times = psutil.cpu_times()
    extra = sum(getattr(times, name, 0.0) for name in ("nice", "irq", "softirq"))
    return float(times.user + times.system + extra)


def _listen_overflows() -> int:
    """Connections the kernel dropped because a listening socket's accept queue was full (Linux)."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return 0
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            fields = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(fields.get("ListenOverflows", 0))
    return 0
