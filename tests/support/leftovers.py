"""End the workers a --workers supervisor started once the test is done, also when it failed.

A worker leaves on its own when its supervisor dies; when that broke (the failure a test may be
reporting), it runs on without it, and no signal to the supervisor or its process group reaches it
(each worker leads a process group of its own). So a test's cleanup collects the workers while the
supervisor lives (its children) and from what they logged, and ends those left.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil

# How long a worker gets to leave on its own before it is killed: one that drains nothing leaves in
# about a second, and a passing test's workers are mostly gone already.
GRACE_SECONDS = 5.0
# A bound on a SIGKILLed process's going, not a wait anyone expects to reach.
KILLED_SECONDS = 5.0


def children(process: subprocess.Popen[Any] | None) -> list[psutil.Process]:
    """`process`'s children now: none once it exited (its pid may be another process's by then)."""
    # Not yet reaped by this process, its pid is its own: nothing else reaps a child of ours.
    if process is None or process.poll() is not None:
        return []
    with contextlib.suppress(psutil.NoSuchProcess):
        return psutil.Process(process.pid).children()
    return []


def workers_of(group: Path, pids: Iterable[int]) -> list[psutil.Process]:
    """Those of `pids` still running with `group` on their command line: a pid taken since by another process is not."""
    if group == Path():
        return []  # the group is not known yet: "." is on many a command line
    found = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):  # a zombie's is gone too
            process = psutil.Process(pid)
            if str(group) in process.cmdline():
                found.append(process)
    return found


def end_workers(workers: Iterable[psutil.Process], grace: float = GRACE_SECONDS) -> None:
    """Give `workers` `grace` seconds to leave on their own, then SIGKILL those left; return once all are gone.

    A killed worker cannot remove its group's directory as the last one out: it is removed here.
    """
    # By pid, once each; `is_running` also tells a process that took a gone worker's pid apart.
    running = [process for process in {p.pid: p for p in workers}.values() if process.is_running()]
    _, left = psutil.wait_procs(running, timeout=grace)
    groups = set()
    for process in left:
        with contextlib.suppress(psutil.NoSuchProcess):  # gone meanwhile (psutil checks the pid is still its)
            argv = process.cmdline()
            if "--group-dir" in argv[:-1]:
                groups.add(argv[argv.index("--group-dir") + 1])
            process.kill()
    psutil.wait_procs(left, timeout=KILLED_SECONDS)
    for group in groups:
        shutil.rmtree(group, ignore_errors=True)
