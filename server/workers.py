"""Run several gateway processes on one port: `sluice --workers N`.

A small parent starts N copies of the same command, each binding the port with SO_REUSEPORT so the
kernel spreads connections across them. The parent forwards SIGTERM and SIGINT (each worker then
drains, see lifecycle.py) and SIGHUP (each worker reloads its gateway keys), replaces a worker that
dies on its own, and exits 0 once every worker has exited after a signal. Workers share a
prometheus-client multi-process directory, so /metrics on any worker reports all of them, and each
listens on a Unix socket in a shared directory, so a browser stream's requests reach the worker that
owns it (see worker_proxy.py). Everything else a worker keeps in memory is its own.

Replacing a worker waits longer after each quick death (backoff), and the parent gives up, with
one line, when a worker cannot start: at once when it exits with a start-up mistake (status 2,
e.g. the port is taken), else after `GIVE_UP_AFTER` deaths in a row. Signals are not handled
asynchronously: the parent blocks them and takes each, with every child's exit, in its one loop
(`sigtimedwait`), so no signal can fall between deciding to replace a worker and starting it.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field

import structlog
from prometheus_client import multiprocess

from .settings import child_environment

log = structlog.get_logger("sluice.workers")

# The exit status of a start-up mistake (see cli.py): the same command would fail again.
STARTUP_MISTAKE = 2
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 10.0
# A worker that ran this long had started: its death is not a failure to start.
STARTED_AFTER = 30.0
# Quick deaths in a row after which the parent stops trying.
GIVE_UP_AFTER = 5
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_WAITED = {*_STOP_SIGNALS, signal.SIGHUP, signal.SIGCHLD}


def worker_argv(argv: list[str], index: int, peer_dir: str, count: int) -> list[str]:
    """This command line for worker `index` of `count`: `--workers` removed, its identity and `--reuse-port` added."""
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
        "-m",
        "server.cli",
        *args,
        "--reuse-port",
        "--worker-index",
        str(index),
        "--peer-dir",
        peer_dir,
        "--worker-count",
        str(count),
    ]


@dataclass
class _Slot:
    """One worker position: its current process, and how its recent starts went."""

    index: int
    pid: int | None = None
    started_at: float = 0.0
    quick_deaths: int = 0
    restart_at: float | None = None


@dataclass
class _Supervisor:
    argv: list[str]
    env: dict[str, str]
    metrics_dir: str
    peer_dir: str
    count: int
    slots: dict[int, _Slot] = field(default_factory=dict)
    stopping: int | None = None  # the signal being forwarded, once one arrived
    exit_code: int = 0

    def start(self, slot: _Slot) -> None:
        argv = worker_argv(self.argv, slot.index, self.peer_dir, self.count)
        # The parent blocks the stop signals; the worker must not inherit that mask.
        slot.pid = os.posix_spawn(argv[0], argv, self.env, setsigmask=())
        slot.started_at = time.monotonic()
        slot.restart_at = None
        log.info("worker_started", worker_pid=slot.pid, worker_index=slot.index)

    def stop_all(self, signum: int) -> None:
        self.stopping = signum
        for slot in self.slots.values():
            slot.restart_at = None
            if slot.pid is not None:
                os.kill(slot.pid, signum)

    def forward(self, signum: int) -> None:
        """Pass `signum` on to every running worker."""
        for slot in self.slots.values():
            if slot.pid is not None:
                os.kill(slot.pid, signum)

    def reap(self) -> None:
        """Collect every child that exited, and decide about its slot."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self.slots.values() if s.pid == pid), None)
            if slot is not None:
                slot.pid = None
                multiprocess.mark_process_dead(pid, self.metrics_dir)  # type: ignore[no-untyped-call]
                self.exited(slot, pid, os.waitstatus_to_exitcode(status))

    def exited(self, slot: _Slot, pid: int, code: int) -> None:
        if self.stopping is not None:
            log.info("worker_exited", worker_pid=pid, worker_index=slot.index, code=code)
            return
        lived = time.monotonic() - slot.started_at
        slot.quick_deaths = slot.quick_deaths + 1 if lived < STARTED_AFTER else 1
        if code == STARTUP_MISTAKE or slot.quick_deaths >= GIVE_UP_AFTER:
            reason = "a start-up mistake, see its line above" if code == STARTUP_MISTAKE else "it keeps dying"
            log.error(
                "workers_gave_up",
                message=f"worker {slot.index} could not start ({reason}); stopping every worker",
                worker_pid=pid,
                worker_index=slot.index,
                code=code,
                attempts=slot.quick_deaths,
            )
            self.exit_code = STARTUP_MISTAKE if code == STARTUP_MISTAKE else 1
            self.stop_all(signal.SIGTERM)
            return
        delay = min(FIRST_BACKOFF * 2 ** (slot.quick_deaths - 1), MAX_BACKOFF)
        slot.restart_at = time.monotonic() + delay
        log.warning("worker_died", worker_pid=pid, worker_index=slot.index, code=code, restart_in=delay)

    def next_deadline(self) -> float | None:
        due = [s.restart_at for s in self.slots.values() if s.restart_at is not None]
        return min(due) if due else None

    def restart_due(self) -> None:
        now = time.monotonic()
        for slot in self.slots.values():
            if slot.restart_at is not None and slot.restart_at <= now:
                self.start(slot)

    def running(self) -> bool:
        return any(s.pid is not None or s.restart_at is not None for s in self.slots.values())


def supervise(count: int, argv: list[str], metrics_dir: str | None = None) -> int:
    """Start `count` workers and keep them running until a signal; return the exit code."""
    own_dir = metrics_dir is None
    metrics_dir = metrics_dir or tempfile.mkdtemp(prefix="sluice-metrics-")
    peer_dir = tempfile.mkdtemp(prefix="sluice-peers-")
    supervisor = _Supervisor(argv, child_environment(metrics_dir), metrics_dir, peer_dir, count)
    # A no-op handler: SIGCHLD's default is to discard it, and a discarded signal cannot be waited for.
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.pthread_sigmask(signal.SIG_BLOCK, _WAITED)
    try:
        for index in range(count):
            supervisor.slots[index] = _Slot(index)
            supervisor.start(supervisor.slots[index])
        log.info("supervisor_started", workers=count, pid=os.getpid())
        while supervisor.running():
            deadline = supervisor.next_deadline()
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            info = signal.sigwaitinfo(_WAITED) if timeout is None else signal.sigtimedwait(_WAITED, timeout)
            if info is not None and info.si_signo in _STOP_SIGNALS:
                supervisor.stop_all(info.si_signo)
            elif info is not None and info.si_signo == signal.SIGHUP:
                supervisor.forward(signal.SIGHUP)
            supervisor.reap()
            if supervisor.stopping is None:
                supervisor.restart_due()
    finally:
        # Take any signal still pending first: unblocked, a late SIGTERM would kill the parent.
        while signal.sigtimedwait(_WAITED, 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _WAITED)
        shutil.rmtree(peer_dir, ignore_errors=True)
        if own_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    log.info("supervisor_stopped")
    return supervisor.exit_code
