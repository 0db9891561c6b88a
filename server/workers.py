"""Run several gateway processes on one port: `sluice --workers N`.

A small parent starts N copies of the same command, each binding the port with SO_REUSEPORT so the
kernel spreads connections across them. The parent forwards SIGTERM and SIGINT (each worker then
drains, see lifecycle.py) and SIGHUP (each worker reloads its gateway keys), replaces a worker that
dies on its own, and exits 0 once every worker has exited after a signal. Workers share a
prometheus-client multi-process directory, so /metrics on any worker reports all of them, and each
listens on a Unix socket in a shared directory, so a browser stream's requests reach the worker that
owns it (see worker_proxy.py). Everything else a worker keeps in memory is its own.

Every worker, the first ones and each replacement, runs the settings the group started with: the
parent keeps a copy of the --config file (`Group.config`), so a file edited or broken since then
reaches no worker (a restart takes it). The gateway keys are the exception SIGHUP makes: when the
file, as the parent reads it on SIGHUP, is one each worker's reload takes (it loads, and turns keys
neither on nor off), the parent keeps that copy too (`Group.keys`), and a replacement serves its keys.

Replacing a worker waits longer after each quick death (backoff). While a position has never had a
worker listening, the group is starting and the parent gives up, with one line, when it cannot: at
once on a start-up mistake (status 2, e.g. the port is taken), else after `GIVE_UP_AFTER` deaths in
a row. Once a position's worker has listened, a replacement that fails to start is retried with
backoff for as long as it takes (`worker_restart_failed`), and the other workers keep serving.
Signals are not handled asynchronously: the parent blocks them and takes each, with every child's
exit, in its one loop (`sigtimedwait`), so no signal can fall between deciding to replace a worker
and starting it; a SIGHUP before that, while the parent starts, is ignored (server/cli.py). A
worker starts with SIGHUP blocked and unblocks it once it listens, its reload handler in place
(`Membership.listening`): a SIGHUP forwarded while it starts waits for that, then reloads its keys,
where it would have killed the worker. Once it stops serving (its cleanup, after the drain), it
ignores SIGHUP to its exit (server/cli.py): a reload that reaches it then cannot kill it.

The group's directory (`sluice-workers-*` in the temporary directory) goes when the parent exits,
whatever ends it short of SIGKILL: a stop, giving up, or a set-up that failed (a --config that cannot
be copied, such as a pipe, is a start-up mistake, status 2). Signals are blocked before it is made.
A temporary directory too long for the workers' Unix sockets is a start-up mistake too, said in one
line with its length and the longest that fits (`_check_socket_paths`), where each worker would die
binding its socket.

When the operator names the metrics directory (PROMETHEUS_MULTIPROC_DIR), the parent takes it for
the group before any worker starts (`claim_metrics_dir`): it refuses, with status 2, one that does
not exist or that another running group holds, and removes the `*.db` files an earlier run left
there, as prometheus-client requires: a group's counts start from zero, as in its own directory. A
single process (no --workers) leaves that directory as it is.

A parent killed outright (SIGKILL, the OOM killer) cannot stop its workers or remove its directory:
each worker drains as on SIGTERM when its parent dies (`Membership`), and the last one out removes
the group's directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import structlog
from prometheus_client import multiprocess

from .settings import (
    METRICS_DIR_VARIABLE,
    AuthSettings,
    Settings,
    SettingsError,
    child_environment,
    load_settings,
)
from .worker_proxy import SOCKET_PATH_LIMIT, WorkerIdentity

log = structlog.get_logger("sluice.workers")

# The exit status of a start-up mistake (see cli.py): the same command would fail again.
STARTUP_MISTAKE = 2
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 10.0
# Doublings of FIRST_BACKOFF past MAX_BACKOFF: a replacement is retried for as long as it takes, so
# its count of quick deaths grows without end, and 2 ** 1025 is a float overflow.
MOST_DOUBLINGS = 8
# A worker that ran this long before dying counts as a fresh failure, not one more in a row.
STARTED_AFTER = 30.0
# Quick deaths in a row, while the group starts, after which the parent stops trying.
GIVE_UP_AFTER = 5
# Seconds between a worker's checks that its parent lives, where the kernel cannot tell it (not Linux).
PARENT_POLL_SECONDS = 1.0
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_PF_EXITING = 0x4  # <linux/sched.h>: the task is on its way out (in do_exit)
# In an operator's metrics directory: locked by the parent of the group that uses it.
METRICS_LOCK = "sluice.lock"
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_WAITED = {*_STOP_SIGNALS, signal.SIGHUP, signal.SIGCHLD}


@dataclass(frozen=True)
class Group:
    """The parent's directory, shared with its workers, removed by the last of them to leave."""

    path: Path

    @property
    def peers(self) -> Path:
        """Each worker's Unix socket (worker_proxy.py)."""
        return self.path / "peers"

    @property
    def metrics(self) -> Path:
        """prometheus-client's multi-process files, unless PROMETHEUS_MULTIPROC_DIR names a directory."""
        return self.path / "metrics"

    @property
    def config(self) -> Path:
        """The --config file as it was when the group started."""
        return self.path / "config.toml"

    @property
    def keys(self) -> Path:
        """The --config file as of the last SIGHUP whose gateway keys the workers took."""
        return self.path / "keys.toml"

    @property
    def listening(self) -> Path:
        """One empty file per worker that listened, named by its pid: it had started."""
        return self.path / "listening"

    @property
    def members(self) -> Path:
        """Locked shared by every live worker: who takes it exclusively is the last one out."""
        return self.path / "members.lock"

    @classmethod
    def create(cls, config: Path | None) -> Group:
        """A new group directory (private to this user), with a copy of `config` when given; none if that fails."""
        group = cls(Path(tempfile.mkdtemp(prefix="sluice-workers-")))
        try:
            for directory in (group.peers, group.metrics, group.listening):
                directory.mkdir()
            group.members.touch()
            if config is not None:
                # The parent loaded `config` a moment ago; a file changed in between fails the first
                # workers' start (status 2), and the parent gives up as for any start-up mistake.
                shutil.copyfile(config, group.config)
        except BaseException:
            shutil.rmtree(group.path, ignore_errors=True)
            raise
        return group

    def keep_keys(self, config: Path, auth_enabled: bool) -> bool:
        """On SIGHUP, before the workers reload: keep `config` for replacements' keys if they take it; whether kept.

        The same test as a worker's reload (server/auth/reload.py): the file loads, and turns the
        keys neither on nor off. A file the workers refuse leaves the last one they took.
        """
        fresh = self.path / "keys.toml.new"
        try:
            shutil.copyfile(config, fresh)
            kept = load_settings(fresh).auth.enabled == auth_enabled
        except (OSError, SettingsError):
            kept = False
        if kept:
            os.replace(fresh, self.keys)
        else:
            fresh.unlink(missing_ok=True)
        return kept

    def listened(self, pid: int) -> bool:
        """Whether worker `pid` had listened; forgets it."""
        try:
            (self.listening / str(pid)).unlink()
        except FileNotFoundError:
            return False
        return True

    def worker_settings(self, config: Path | None) -> tuple[Settings, AuthSettings | None]:
        """A worker's settings, the group's: the start's, and the `[auth]` whose keys replace theirs, if any."""
        settings = load_settings(self.config if config is not None else None)
        keys = load_settings(self.keys).auth if config is not None and self.keys.exists() else None
        return settings, keys


def worker_argv(argv: list[str], index: int, group: Group, count: int) -> list[str]:
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
        str(group.peers),
        "--worker-count",
        str(count),
        "--supervisor-pid",
        str(os.getpid()),
        "--group-dir",
        str(group.path),
    ]


@dataclass
class _Slot:
    """One worker position: its current process, and how its recent starts went."""

    index: int
    pid: int | None = None
    started_at: float = 0.0
    quick_deaths: int = 0
    restart_at: float | None = None
    # Once a worker of this position listened, the group has started: a failure is no longer the command's.
    served: bool = False
    failed_starts: int = 0  # replacements in a row that exited without listening


@dataclass
class _Supervisor:
    argv: list[str]
    env: dict[str, str]
    metrics_dir: str
    group: Group
    count: int
    slots: dict[int, _Slot] = field(default_factory=dict)
    stopping: int | None = None  # the signal being forwarded, once one arrived
    exit_code: int = 0

    def start(self, slot: _Slot) -> None:
        argv = worker_argv(self.argv, slot.index, self.group, self.count)
        # Not the parent's mask (the signals its loop waits for), but SIGHUP held: sent while the
        # worker starts, it would kill it; the worker unblocks it once its reload handler is in place.
        # A process group of its own: a signal to the parent's group (Ctrl-C, `kill -- -PGID`) reaches
        # the parent alone, which passes it on once; twice, it would be a second signal, which hurries.
        slot.pid = os.posix_spawn(argv[0], argv, self.env, setsigmask=(signal.SIGHUP,), setpgroup=0)
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
                self.exited(slot, pid, os.waitstatus_to_exitcode(status), self.group.listened(pid))

    def exited(self, slot: _Slot, pid: int, code: int, listened: bool) -> None:
        if self.stopping is not None:
            log.info("worker_exited", worker_pid=pid, worker_index=slot.index, code=code)
            return
        lived = time.monotonic() - slot.started_at
        slot.quick_deaths = slot.quick_deaths + 1 if lived < STARTED_AFTER else 1
        # While no worker of this position ever listened, the group is starting: the command may be wrong.
        starting = not slot.served and not listened
        if starting and (code == STARTUP_MISTAKE or slot.quick_deaths >= GIVE_UP_AFTER):
            self.give_up(slot, pid, code)
            return
        delay = min(FIRST_BACKOFF * 2 ** min(slot.quick_deaths - 1, MOST_DOUBLINGS), MAX_BACKOFF)
        slot.restart_at = time.monotonic() + delay
        fields = {"worker_pid": pid, "worker_index": slot.index, "code": code, "restart_in": delay}
        if listened or not slot.served:
            slot.served = slot.served or listened
            slot.failed_starts = 0
            log.warning("worker_died", **fields)
            return
        # A replacement that could not start (a start-up mistake now, say a port no longer allowed):
        # the others keep serving, and it is tried again, each time later, up to MAX_BACKOFF apart.
        slot.failed_starts += 1
        log.error(
            "worker_restart_failed",
            message=f"a replacement for worker {slot.index} could not start (exit {code}, see its line above); "
            f"the other workers keep serving; trying again in {delay:g} s",
            attempts=slot.failed_starts,
            **fields,
        )

    def give_up(self, slot: _Slot, pid: int, code: int) -> None:
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


def _warn_if_limits_per_worker(count: int, settings: Settings) -> None:
    """Say so when gateway keys' limits are counted by each worker alone (no Redis to share them).

    Each worker then admits a key's `rpm`, `tpm` and `max_streams` by itself: `count` times each,
    in all. Not refused: a single machine may want exactly that; but it must not go unsaid.
    """
    if settings.redis.url is not None:
        return
    limited = sorted(key.name for key in settings.auth.keys if key.rpm or key.tpm or key.max_streams)
    if limited:
        log.warning(
            "limits_per_worker",
            message=f"Without [redis] url each of the {count} workers counts the keys' limits alone: "
            f"a key may use {count} times its rpm, tpm and max_streams. Set [redis] url to share them.",
            workers=count,
            keys=limited,
        )


def supervise(count: int, argv: list[str], settings: Settings, config: Path | None = None) -> int:
    """Start `count` workers on `settings` (from `config`), keep them running until a signal; return the exit code.

    SettingsError (a start-up mistake) when the group cannot be set up; nothing of it is left then.
    """
    # A no-op handler: SIGCHLD's default is to discard it, and a discarded signal cannot be waited for.
    signal.signal(signal.SIGCHLD, lambda *_: None)
    # SIGHUP too, ignored since start-up (server/cli.py): whether an ignored signal that is blocked
    # waits to be taken is the platform's choice (Linux keeps it). A worker starts with it at its
    # default (a handler is not inherited), blocked: `_Supervisor.start`.
    signal.signal(signal.SIGHUP, lambda *_: None)
    # Before the group's directory exists: a stop signal from here on waits for the loop, and the
    # `finally` removes the directory however this function ends.
    signal.pthread_sigmask(signal.SIG_BLOCK, _WAITED)
    held = contextlib.ExitStack()
    try:
        group = _set_up(count, settings, config, held)
        metrics_dir = settings.process.metrics_dir or str(group.metrics)
        supervisor = _Supervisor(argv, child_environment(metrics_dir), metrics_dir, group, count)
        for index in range(count):
            supervisor.slots[index] = _Slot(index)
            supervisor.start(supervisor.slots[index])
        log.info("supervisor_started", workers=count, pid=os.getpid())
        _warn_if_limits_per_worker(count, settings)
        while supervisor.running():
            deadline = supervisor.next_deadline()
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            info = signal.sigwaitinfo(_WAITED) if timeout is None else signal.sigtimedwait(_WAITED, timeout)
            if info is not None and info.si_signo in _STOP_SIGNALS:
                supervisor.stop_all(info.si_signo)
            elif info is not None and info.si_signo == signal.SIGHUP:
                if config is not None:
                    group.keep_keys(config, settings.auth.enabled)
                supervisor.forward(signal.SIGHUP)
            supervisor.reap()
            if supervisor.stopping is None:
                supervisor.restart_due()
    finally:
        # Take any signal still pending first: unblocked, a late SIGTERM would kill the parent.
        while signal.sigtimedwait(_WAITED, 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _WAITED)
        held.close()  # the group's directory, and the lock on the operator's metrics directory
    log.info("supervisor_stopped")
    return supervisor.exit_code


def _set_up(count: int, settings: Settings, config: Path | None, held: contextlib.ExitStack) -> Group:
    """The operator's metrics directory taken, then the group's directory made; `held` lets go of both."""
    if settings.process.metrics_dir is not None:
        held.callback(os.close, claim_metrics_dir(settings.process.metrics_dir))
    try:
        group = Group.create(config)
    except OSError as exc:
        copy = f" with a copy of --config {config}" if config is not None else ""
        raise SettingsError(
            f"--workers {count}: cannot set up the group's directory in {tempfile.gettempdir()}{copy}: {exc}"
        ) from None
    held.callback(shutil.rmtree, group.path, ignore_errors=True)
    _check_socket_paths(group, count)
    return group


def _check_socket_paths(group: Group, count: int) -> None:
    """SettingsError when the temporary directory is too long for the workers' Unix sockets to fit in it.

    A refusal rather than a group made in a shorter directory (/tmp): TMPDIR is the operator's choice
    of where the group's files go, the metrics files and the copy of --config as well as the sockets,
    for reasons this cannot see (/tmp read-only, small, or shared with other services). A line saying
    how long TMPDIR may be is one edit away; a group moved elsewhere unasked would be a surprise.
    """
    longest = len(os.fsencode(WorkerIdentity(count - 1, group.peers, count).socket_path()))
    if longest <= SOCKET_PATH_LIMIT:
        return
    temporary = len(os.fsencode(group.path.parent))
    raise SettingsError(
        f"--workers {count}: the temporary directory {group.path.parent} (TMPDIR) is {temporary} bytes long, "
        f"which makes the workers' Unix socket paths {longest} bytes, over the limit of {SOCKET_PATH_LIMIT}: "
        f"set TMPDIR to a directory of at most {SOCKET_PATH_LIMIT - (longest - temporary)} bytes"
    )


def claim_metrics_dir(path: str) -> int:
    """Take the operator's metrics directory for this group: lock it, then remove an earlier run's files.

    prometheus-client's files must not outlive the processes that wrote them: a counter would carry
    its count over a restart. Nor may the directory be another running group's, whose files this
    would remove under it: the parent holds `METRICS_LOCK` in it while its group runs (the kernel lets
    go of a killed parent's). Returns the lock's descriptor; SettingsError when the directory cannot
    be taken.
    """
    where = f"environment variable {METRICS_DIR_VARIABLE}={path}"
    try:
        lock = os.open(os.path.join(path, METRICS_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise SettingsError(f"{where}: cannot keep the workers' metrics there: {exc.strerror}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        stale = list(Path(path).glob("*.db"))
        for file in stale:
            file.unlink(missing_ok=True)
    except BlockingIOError:
        os.close(lock)
        raise SettingsError(
            f"{where}: another running --workers group keeps its metrics there; give each group its own directory"
        ) from None
    except OSError as exc:
        os.close(lock)
        raise SettingsError(f"{where}: cannot clear an earlier run's metrics files from it: {exc}") from None
    if stale:
        log.info(
            "metrics_dir_wiped",
            message="removed the metrics files an earlier run left: the group's counts start from zero",
            directory=path,
            files=len(stale),
        )
    return lock


@dataclass
class Membership:
    """A worker's tie to its parent: it drains when the parent dies, and the last one out cleans up.

    On Linux the kernel signals the worker when its parent dies (PR_SET_PDEATHSIG, `_parent_dying`),
    which sends itself SIGTERM; elsewhere a thread checks the parent every `PARENT_POLL_SECONDS` and
    sends it. Either way the worker then drains as on any SIGTERM (a second one, during a drain the
    parent started, hurries it). Each worker holds the group's lock shared; leaving with the parent
    gone, it tries to take it exclusively, and the one that can is the last one out: it removes the
    group's directory.
    """

    group: Group
    supervisor_pid: int
    # The multi-process metrics directory, once the settings say which (see `leave`).
    metrics_dir: str | None = None
    _lock: int | None = None
    _told: bool = False  # the parent's death reached `_parent_dying`

    def join(self) -> bool:
        """Hold the group's lock and watch the parent; False when the parent is gone already."""
        # Until the drain's own handler replaces this one, SIGTERM ends start-up through `leave`.
        signal.signal(signal.SIGTERM, _stop_starting)
        with contextlib.suppress(FileNotFoundError):  # the last one out removed it: the parent is gone
            self._lock = os.open(self.group.members, os.O_RDONLY | os.O_CLOEXEC)
            fcntl.flock(self._lock, fcntl.LOCK_SH)
        if not _die_with_parent(self._parent_dying):
            thread = threading.Thread(
                target=watch_parent, args=(self.supervisor_pid, PARENT_POLL_SECONDS, _terminate_self), daemon=True
            )
            thread.start()
        # The parent may have died before the kernel was asked to tell: then it never will.
        return self.supervisor_alive()

    def supervisor_alive(self) -> bool:
        """Whether the parent that started this worker still runs (an orphan is adopted by another).

        A parent being killed stays the worker's parent until its last thread is out: the kernel
        hands its children to another of its threads (its log writer, server/logs.py) first, and
        signals the death then. Its first thread, the one that started the worker, going says it goes.
        """
        if os.getppid() != self.supervisor_pid:
            return False
        exiting = _exiting(self.supervisor_pid)
        return not exiting and os.getppid() == self.supervisor_pid  # gone since: /proc had no record

    def _parent_dying(self, signum: int, frame: FrameType | None) -> None:
        # The kernel sends this as each of the parent's threads that has the worker as child goes:
        # once for it to count. As SIGTERM itself, the next would hurry the drain, or kill the worker
        # before it leaves once it stopped serving (SIGTERM is ignored then: contexts.ignore_from_now).
        if self._told or self.supervisor_alive():
            return  # told already, or not the kernel: the parent runs
        self._told = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            _stop_as_on_sigterm()  # starting: `_stop_starting`
        else:
            # From the loop, not from in here: uvloop takes a signal raised while it runs the
            # process's signal handlers twice, and a second SIGTERM hurries the drain.
            loop.call_soon_threadsafe(_stop_as_on_sigterm)

    def listening(self) -> None:
        """Once the sockets listen, every handler in place: tell the parent, and take a SIGHUP held since start-up.

        A failure of this worker's position is no longer a start-up mistake. SIGHUP was blocked from
        the worker's start (`_Supervisor.start`); unblocked, one that came meanwhile reaches the
        reload handler (server/contexts.py) now.
        """
        with contextlib.suppress(OSError):
            (self.group.listening / str(os.getpid())).touch()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})

    def leave(self) -> None:
        """Let go of the group; with the parent gone, the last worker out removes its directory."""
        if self._lock is None:
            return
        lock, self._lock = self._lock, None
        try:
            if self.supervisor_alive():
                return  # the parent removes it once every worker is out
            if self.metrics_dir is not None:
                # What the parent would have done: a directory named by PROMETHEUS_MULTIPROC_DIR
                # outlives the group, and this worker's gauges (an open breaker) must not.
                multiprocess.mark_process_dead(os.getpid(), self.metrics_dir)  # type: ignore[no-untyped-call]
            # Unlocked first: two workers leaving together must not each hold the lock the other needs.
            fcntl.flock(lock, fcntl.LOCK_UN)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                last = True
            except BlockingIOError:
                last = False  # another worker is still in: it is the last one out
            if last:
                shutil.rmtree(self.group.path, ignore_errors=True)
            log.warning(
                "supervisor_gone",
                message="the --workers supervisor is gone (killed?): this worker stopped as on SIGTERM",
                group_removed=str(self.group.path) if last else None,
            )
        finally:
            os.close(lock)


def watch_parent(supervisor_pid: int, interval: float, on_gone: Callable[[], None]) -> None:
    """Call `on_gone` once the process's parent is no longer `supervisor_pid`, checking every `interval` s."""
    while os.getppid() == supervisor_pid:
        time.sleep(interval)
    on_gone()


def _die_with_parent(on_death: Callable[[int, FrameType | None], None]) -> bool:
    """Have the kernel call `on_death` when the parent dies; False where it cannot (not Linux).

    A signal of its own, not SIGUSR1/2, which bench/instructions_serve.py takes for the profiler.
    """
    if not sys.platform.startswith("linux"):
        return False
    signal.signal(signal.SIGRTMIN, on_death)
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGRTMIN), 0, 0, 0) == 0)


def _exiting(pid: int) -> bool:
    """Whether process `pid`'s first thread is exiting or gone (Linux's /proc); False where it cannot tell."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()  # after the name, which may hold anything
    except OSError:
        return False
    return fields[0] in (b"Z", b"X") or int(fields[6]) & _PF_EXITING != 0


def _terminate_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def _stop_as_on_sigterm() -> None:
    # Start-up's stop or the drain; once the worker stopped serving (SIGTERM ignored, or at its
    # default before it served), it is on its way out already.
    if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN):
        _terminate_self()


def _stop_starting(signum: int, frame: FrameType | None) -> None:
    # Raised where start-up is: the worker's `finally` leaves the group, and it exits 0 as a drain does.
    raise SystemExit(0)
