"""Run several gateway processes on one port: `python run.py --workers N`.

A small parent starts N copies of the same command, each binding the port with SO_REUSEPORT
so the kernel spreads connections across them. The parent forwards SIGTERM and SIGINT (each
worker then drains, see lifecycle.py), replaces a worker that dies on its own, and exits 0 once
every worker has exited after a signal. Workers share a prometheus-client multi-process
directory, so /metrics on any worker reports all of them, and each listens on a Unix socket in a
shared directory, so a browser stream's requests reach the worker that owns it (see worker_proxy.py).
Everything else a worker keeps in memory is its own.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import FrameType

import structlog
from prometheus_client import multiprocess

log = structlog.get_logger("sluice.workers")

RUN_PY = Path(__file__).resolve().parent.parent / "run.py"


def worker_argv(argv: list[str], index: int, peer_dir: str) -> list[str]:
    """This command line for worker `index`: `--workers` removed, its identity and `--reuse-port` added."""
    args: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--workers":
            skip = True
            continue
        if arg.startswith("--workers="):
            continue
        args.append(arg)
    return [
        sys.executable,
        str(RUN_PY),
        *args,
        "--reuse-port",
        "--worker-index",
        str(index),
        "--peer-dir",
        peer_dir,
    ]


def supervise(count: int, argv: list[str]) -> int:
    """Start `count` workers and keep them running until a signal; return the exit code."""
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    own_dir = metrics_dir is None
    if metrics_dir is None:
        metrics_dir = tempfile.mkdtemp(prefix="sluice-metrics-")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    peer_dir = tempfile.mkdtemp(prefix="sluice-peers-")
    workers: dict[int, tuple[int, subprocess.Popen[bytes]]] = {}
    stopping = False

    def start_worker(index: int) -> None:
        # A replacement takes the dead worker's index: its socket, not its streams, which died with it.
        process = subprocess.Popen(worker_argv(argv, index, peer_dir), env=env)
        workers[process.pid] = (index, process)
        log.info("worker_started", worker_pid=process.pid, worker_index=index)

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for _, process in workers.values():
            if process.poll() is None:
                process.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for index in range(count):
        start_worker(index)
    log.info("supervisor_started", workers=count, pid=os.getpid())
    try:
        while workers:
            pid, status = os.wait()
            entry = workers.pop(pid, None)
            if entry is None:
                continue
            index, process = entry
            process.returncode = os.waitstatus_to_exitcode(status)
            multiprocess.mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]
            if stopping:
                log.info("worker_exited", worker_pid=pid, code=process.returncode)
            else:
                log.warning("worker_died", worker_pid=pid, code=process.returncode)
                start_worker(index)
    finally:
        shutil.rmtree(peer_dir, ignore_errors=True)
        if own_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    log.info("supervisor_stopped")
    return 0
