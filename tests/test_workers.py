"""The --workers supervisor as real processes: backoff, giving up on a worker that cannot start, signals,
replacements on the group's settings, a dead worker's metrics, and workers outliving a killed supervisor."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil
import pytest
import uvloop

from server.metrics import Metrics
from server.workers import MAX_BACKOFF, Group, Membership, _Slot, _Supervisor, watch_parent, worker_argv
from tests.conftest import TEST_CONFIG
from tests.support.leftovers import children, end_workers, workers_of
from tests.support.processes import ManagedProcess, Simulator, clean_env, free_port, write_config
from tests.support.security import KEY_ALPHA, bearer, keys_toml, sha256, start_keyed_gateway
from tests.test_operations import metric_value

BREAKER_STATE = "sluice_upstream_breaker_state"

# Generous bounds for a loaded machine; none of them is a speed claim.
EXIT_SECONDS = 60
# For what takes about a second: a worker that exits before serving, one that drains nothing, a thread's check.
QUICK_EXIT_SECONDS = 15
# Between the tokens of the stream a worker is told of its supervisor's death during: far longer
# than the telling takes, so it lands with the worker waiting and the stream still live.
TELLING_GAP_MS = 2000
# Where a thread sleeping in epoll_wait is, as /proc/PID/task/TID/wchan names it (by kernel version).
EPOLL_WAITS = ("do_epoll_wait", "ep_poll")
# Where a thread sleeping in the read of an empty pipe is (by kernel version).
PIPE_READS = ("pipe_wait", "pipe_read", "anon_pipe_read")


def supervisor(port: int, workers: int = 2, **environ: str) -> ManagedProcess:
    argv = [sys.executable, "run.py", "--port", str(port), "--config", "config/test.toml", "--workers", str(workers)]
    return ManagedProcess(argv, clean_env(environ)).start()


@pytest.fixture
def dying_workers(tmp_path: Path) -> dict[str, str]:
    """An environment in which every worker exits with status 3 as its interpreter starts."""
    (tmp_path / "sitecustomize.py").write_text(
        "import os, sys\nif '--worker-index' in sys.argv:\n    os._exit(3)\n", encoding="utf-8"
    )
    return {"PYTHONPATH": str(tmp_path)}


def test_a_worker_that_cannot_bind_makes_the_supervisor_give_up_at_once_with_one_line(taken_port: int) -> None:
    process = supervisor(taken_port)
    try:
        assert process.wait(EXIT_SECONDS) == 2
        process.stop()  # collects the remaining output
        (gave_up,) = process.events("workers_gave_up")
        assert gave_up["level"] == "error"
        assert gave_up["code"] == 2
        assert "could not start" in gave_up["message"]
        # A start-up mistake is not retried: only the first two workers ever started.
        assert len(process.events("worker_started")) == 2
        assert any(f"cannot listen on 127.0.0.1:{taken_port}" in line for line in process.lines)
        assert process.events("supervisor_stopped")
    finally:
        process.stop()


def test_a_worker_that_keeps_dying_is_restarted_with_doubling_backoff_then_given_up(
    dying_workers: dict[str, str],
) -> None:
    process = supervisor(free_port(), workers=2, **dying_workers)
    try:
        assert process.wait(EXIT_SECONDS) == 1
        process.stop()
        (gave_up,) = process.events("workers_gave_up")
        index = gave_up["worker_index"]
        assert gave_up["attempts"] == 5
        assert gave_up["code"] == 3
        delays = [e["restart_in"] for e in process.events("worker_died") if e["worker_index"] == index]
        assert delays == [0.1, 0.2, 0.4, 0.8]
        # Five starts of the failing position, none after giving up.
        starts = [e for e in process.events("worker_started") if e["worker_index"] == index]
        assert len(starts) == 5
    finally:
        process.stop()


def test_a_stop_signal_while_a_replacement_waits_stops_everything_and_starts_nothing(
    dying_workers: dict[str, str],
) -> None:
    process = supervisor(free_port(), workers=2, **dying_workers)
    try:
        process.wait_for_event("worker_died")  # a replacement is now waiting for its backoff
        process.signal(signal.SIGTERM)
        assert process.wait(EXIT_SECONDS) == 0
        process.stop()
        started = [e["worker_pid"] for e in process.events("worker_started")]
        for pid in started:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        assert not process.events("workers_gave_up")
    finally:
        process.stop()


# --- A worker dying while the group serves -----------------------------------------------------


@dataclass
class Running:
    """A supervisor whose workers all listen, and how to reach each worker alone."""

    process: ManagedProcess
    group: Path
    # Its workers once they listened, taken while it lived: `stop` ends any left.
    workers: list[psutil.Process] = field(default_factory=list)

    def pid(self, index: int) -> int:
        """The process id of worker `index` now."""
        return int([e for e in self.process.events("worker_started") if e["worker_index"] == index][-1]["worker_pid"])

    def session(self, index: int) -> aiohttp.ClientSession:
        """A session whose every request reaches worker `index`, over its Unix socket."""
        connector = aiohttp.UnixConnector(path=str(self.group / "peers" / f"worker-{index}.sock"))
        return aiohttp.ClientSession("http://worker", connector=connector)

    def listening(self) -> int:
        return len(self.process.events("sluice_listening"))

    def wait_for_replacement(self) -> None:
        """Wait until a third worker listens; fail at the first replacement that could not start."""
        failed = "worker_restart_failed"
        self.process.wait_for_line(lambda _: self.listening() >= 3 or bool(self.process.events(failed)))
        assert not self.process.events(failed)

    def stop(self) -> None:
        """SIGTERM, then make sure no worker outlives the test (nor its group directory)."""
        # Taken before the supervisor goes: its children now, and every worker it said it started
        # (a killed supervisor's workers are its children no more).
        started = [event["worker_pid"] for event in self.process.events("worker_started")]
        workers = [*self.workers, *children(self.process.process), *workers_of(self.group, started)]
        self.process.stop()
        end_workers(workers)
        self.process.stop()  # its output's end, which a worker left held open
        if self.group != Path():
            shutil.rmtree(self.group, ignore_errors=True)


def start_listening(argv_tail: list[str], **environ: str) -> Running:
    """`run.py --workers 2 ...argv_tail` once both workers listen."""
    argv = [sys.executable, "run.py", "--port", str(free_port()), "--workers", "2", *argv_tail]
    process = ManagedProcess(argv, clean_env(environ)).start()
    running = Running(process, Path())
    try:
        process.wait_for_line(lambda _: running.listening() >= 2)
        running.workers = psutil.Process(process.pid).children()
        worker_argv = running.workers[0].cmdline()
    except BaseException:
        running.stop()
        raise
    running.group = Path(worker_argv[worker_argv.index("--group-dir") + 1])
    return running


def append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def replace_keys(config: Path, auth: str) -> None:
    """The keyed gateway's configuration with its [auth] section replaced by `auth`."""
    config.write_text(config.read_text().split("\n[auth]\n", 1)[0] + auth)


@pytest.fixture
def refusing_replacements(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment in which a worker exits with a start-up mistake (2) while the returned file exists."""
    switch = tmp_path / "refuse"
    (tmp_path / "sitecustomize.py").write_text(
        f"import os, sys\nif '--worker-index' in sys.argv and os.path.exists({str(switch)!r}):\n    os._exit(2)\n",
        encoding="utf-8",
    )
    return {"PYTHONPATH": str(tmp_path)}, switch


async def test_a_replacement_that_cannot_start_is_retried_with_backoff_while_the_other_worker_serves(
    refusing_replacements: tuple[dict[str, str], Path],
) -> None:
    environ, switch = refusing_replacements
    running = start_listening(["--config", "config/test.toml"], **environ)
    try:
        victim, survivor = running.pid(0), running.pid(1)
        switch.touch()
        os.kill(victim, signal.SIGKILL)
        # Five quick deaths in a row: past the count that gives up on a group still starting.
        running.process.wait_for_line(lambda _: len(running.process.events("worker_restart_failed")) >= 4)
        failed = running.process.events("worker_restart_failed")[:4]
        assert [(e["worker_index"], e["code"], e["attempts"]) for e in failed] == [(0, 2, n) for n in (1, 2, 3, 4)]
        assert [e["restart_in"] for e in failed] == [0.2, 0.4, 0.8, 1.6]  # after worker_died's 0.1
        assert failed[0]["level"] == "error"
        assert not running.process.events("workers_gave_up")
        async with running.session(1) as http, http.get("/livez") as response:
            assert (await response.json())["pid"] == survivor
        switch.unlink()
        running.process.wait_for_line(lambda _: running.listening() >= 3)
        async with running.session(0) as http, http.get("/livez") as response:
            assert (await response.json())["pid"] == running.pid(0) != victim
        running.process.signal(signal.SIGTERM)
        assert running.process.wait(EXIT_SECONDS) == 0
    finally:
        running.stop()


async def test_a_worker_killed_while_its_configuration_file_is_broken_is_replaced_and_serves(tmp_path: Path) -> None:
    config = Path(write_config(tmp_path / "sluice.toml", ""))
    running = start_listening(["--config", str(config)])
    try:
        victim = running.pid(0)
        append(config, "\n[routing\n")  # an operator's typo, mid-edit
        os.kill(victim, signal.SIGKILL)
        running.wait_for_replacement()
        async with running.session(0) as http, http.get("/livez") as response:
            assert (await response.json())["pid"] == running.pid(0) != victim
    finally:
        running.stop()


def test_a_replacement_worker_runs_the_settings_the_group_started_with_not_the_file_edited_since(
    tmp_path: Path,
) -> None:
    config = Path(write_config(tmp_path / "sluice.toml", ""))
    running = start_listening(["--config", str(config)])
    try:
        started = {tuple(e["models"]) for e in running.process.events("sluice_listening")}
        # A valid edit that a restart would take: one model fewer.
        config.write_text(config.read_text().replace('"gpt-5", ', ""))
        os.kill(running.pid(0), signal.SIGKILL)
        running.wait_for_replacement()
        replacement = running.process.events("sluice_listening")[-1]
        assert replacement["pid"] == running.pid(0)
        assert {tuple(replacement["models"])} == started
    finally:
        running.stop()


def test_workers_without_redis_warn_that_each_counts_the_keys_limits(simulator: Simulator, tmp_path: Path) -> None:
    with start_keyed_gateway(tmp_path, simulator, args=("--workers", "2")) as gateway:
        warning = gateway.process.wait_for_event("limits_per_worker")
    assert warning["workers"] == 2
    assert warning["keys"]  # the test keys with rpm, tpm or max_streams


async def test_a_replacement_worker_serves_the_keys_of_the_last_sighup_its_peers_took(
    simulator: Simulator, tmp_path: Path
) -> None:
    with start_keyed_gateway(tmp_path, simulator, args=("--workers", "2")) as gateway:
        process = gateway.process
        process.wait_for_line(lambda _: len(process.events("sluice_listening")) >= 2)
        worker_argv = psutil.Process(process.pid).children()[0].cmdline()
        running = Running(process, Path(worker_argv[worker_argv.index("--group-dir") + 1]))
        try:
            config = tmp_path / "keys.toml"
            replace_keys(config, keys_toml(include_alpha=False))
            process.signal(signal.SIGHUP)
            process.wait_for_line(lambda _: len(process.events("gateway_keys_reloaded")) >= 2)
            append(config, "\n[auth\n")  # then a typo: no reload would take this file
            os.kill(running.pid(0), signal.SIGKILL)
            running.wait_for_replacement()
            statuses = {}
            for index in (0, 1):
                async with running.session(index) as http, http.get("/v1/models", headers=bearer(KEY_ALPHA)) as r:
                    statuses[index] = r.status
            assert statuses == {0: 401, 1: 401}
        finally:
            running.stop()


# --- Metrics of a dead worker -------------------------------------------------------------------


async def open_a_breaker(running: Running, index: int) -> None:
    """Open worker `index`'s breaker of the upstream `default` (with breaker_failures = 1)."""
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x\n#sim fault=server_error"}]}
    async with running.session(index) as http:
        async with http.post("/v1/chat/completions", json=body) as response:
            assert response.status == 502
        async with http.get("/metrics") as response:
            assert metric_value(await response.text(), BREAKER_STATE, upstream="default") == 2


async def test_a_worker_killed_with_a_breaker_open_takes_its_breaker_state_out_of_metrics(
    simulator: Simulator,
) -> None:
    running = start_listening(
        ["--config", "config/test.toml"],
        AI_INTEGRATIONS_OPENAI_API_KEY="sk-x",
        AI_INTEGRATIONS_OPENAI_BASE_URL=simulator.base_url,
        SLUICE_ROUTING_BREAKER_FAILURES="1",
        SLUICE_ROUTING_BREAKER_COOLDOWN_SECONDS="600",  # far away: only the worker's death may close it
    )
    try:
        await open_a_breaker(running, 0)
        victim = running.pid(0)
        os.kill(victim, signal.SIGKILL)
        running.process.wait_for_event("worker_died", worker_pid=victim)
        async with running.session(1) as http:
            async with http.get("/metrics") as response:
                assert metric_value(await response.text(), BREAKER_STATE, upstream="default") == 0
            async with http.get("/readyz") as response:
                assert response.status == 200
    finally:
        running.stop()


# --- The supervisor killed outright ---------------------------------------------------------------


def test_workers_whose_supervisor_is_killed_drain_exit_and_the_last_removes_the_group_directory() -> None:
    running = start_listening(["--config", "config/test.toml"])
    workers = psutil.Process(running.process.pid).children()
    try:
        os.kill(running.process.pid, signal.SIGKILL)
        _, alive = psutil.wait_procs(workers, timeout=QUICK_EXIT_SECONDS)
        assert alive == []
        assert not running.group.exists()
        gone = running.process.events("supervisor_gone")
        assert sorted(e["pid"] for e in gone) == sorted(w.pid for w in workers)
        assert [e["group_removed"] for e in gone if e["group_removed"]] == [str(running.group)]
        assert len(running.process.events("drain_finished")) == 2
    finally:
        running.stop()


async def test_workers_whose_supervisor_is_killed_take_their_gauges_out_of_a_metrics_directory_that_stays(
    simulator: Simulator, tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    running = start_listening(
        ["--config", "config/test.toml"],
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),  # the operator's: it outlives the group
        AI_INTEGRATIONS_OPENAI_API_KEY="sk-x",
        AI_INTEGRATIONS_OPENAI_BASE_URL=simulator.base_url,
        SLUICE_ROUTING_BREAKER_FAILURES="1",
        SLUICE_ROUTING_BREAKER_COOLDOWN_SECONDS="600",
    )
    workers = psutil.Process(running.process.pid).children()
    try:
        await open_a_breaker(running, 0)
        os.kill(running.process.pid, signal.SIGKILL)
        _, alive = psutil.wait_procs(workers, timeout=QUICK_EXIT_SECONDS)
        assert alive == []
        # What a new group on the same directory would show.
        assert metric_value(Metrics(str(metrics_dir)).exposition().decode(), BREAKER_STATE, upstream="default") == 0
    finally:
        running.stop()


def half_dead_parent(group: Group, port: int, go: Path, **environ: str) -> ManagedProcess:
    """A worker of `group` on `port` whose parent, once `go` is opened, is a supervisor killed halfway."""
    os.mkfifo(go)
    argv = [sys.executable, "-m", "tests.support.half_dead_parent", str(group.path), str(port), str(go)]
    return ManagedProcess(argv, clean_env(environ)).start()


def stop_half_dead_parent(parent: ManagedProcess, group: Group) -> None:
    """Stop the parent, and its worker if it outlived it (it must leave on its own: that may be what broke)."""
    # Taken before the parent goes: its child now, and the worker that said it listens (the child
    # of no one the test knows once the parent was killed).
    listening = [event["pid"] for event in parent.events("sluice_listening")]
    workers = [*children(parent.process), *workers_of(group.path, listening)]
    parent.stop()
    end_workers(workers)
    parent.stop()  # its output's end, which a worker left held open
    shutil.rmtree(group.path, ignore_errors=True)


def test_a_worker_whose_supervisor_is_dying_with_a_thread_left_drains_and_leaves_as_if_it_were_gone(
    tmp_path: Path,
) -> None:
    # A killed supervisor stays the workers' parent until its last thread is out, and the kernel
    # signals its death before that: the worker must not take it for alive then (getppid alone does).
    group = Group.create(TEST_CONFIG)
    go = tmp_path / "go"
    parent = half_dead_parent(group, free_port(), go)
    try:
        worker = parent.wait_for_event("sluice_listening")["pid"]
        go.write_bytes(b"")  # the parent's first thread exits now
        gone = parent.wait_for_event("supervisor_gone", QUICK_EXIT_SECONDS)
        assert gone["pid"] == worker
        assert gone["group_removed"] == str(group.path)
        assert not group.path.exists()
        assert parent.events("drain_finished")
    finally:
        stop_half_dead_parent(parent, group)


def wait_in_epoll(pid: int, tid: int) -> None:
    """Return once thread `tid` of process `pid` sleeps in epoll_wait: its event loop waits, running nothing."""
    wait_sleeping_in(pid, tid, EPOLL_WAITS, "epoll")


def wait_sleeping_in(pid: int, tid: int, places: tuple[str, ...], what: str) -> None:
    """Return once thread `tid` of process `pid` sleeps in the kernel at one of `places` (its wchan)."""
    wchan = Path(f"/proc/{pid}/task/{tid}/wchan")
    deadline = time.monotonic() + QUICK_EXIT_SECONDS
    while (where := wchan.read_text()) not in places:
        assert time.monotonic() < deadline, f"thread {tid} of process {pid} never waited in {what} (last in {where!r})"
        time.sleep(0.001)  # the pace of a poll of the thread's state, not a synchronisation


async def test_a_worker_told_twice_of_its_supervisors_death_drains_its_live_stream_to_the_end(
    simulator: Simulator, tmp_path: Path
) -> None:
    # The kernel tells a worker once per thread of the dying supervisor it passes through: the
    # second telling, were it a second SIGTERM, would hurry the drain and end the stream at once.
    # The first telling reaches the worker's loop while it waits (uvloop then runs the handler inside
    # its own signal dispatch, where a SIGTERM raised by the handler would arrive twice), and both
    # come seconds before the stream's next token: nothing else wakes the worker meanwhile.
    group = Group.create(TEST_CONFIG)
    port = free_port()
    parent = half_dead_parent(
        group,
        port,
        tmp_path / "go",
        AI_INTEGRATIONS_OPENAI_API_KEY="sk-x",
        AI_INTEGRATIONS_OPENAI_BASE_URL=simulator.base_url,
        SLUICE_SERVER_DRAIN_TIMEOUT=str(EXIT_SECONDS),
        SLUICE_UPSTREAM_IDLE_TIMEOUT=str(EXIT_SECONDS),  # far beyond the stream's gaps
        SLUICE_UPSTREAM_PROBE_INTERVAL="600",  # no probe wakes the loop
    )
    try:
        worker = parent.wait_for_event("sluice_listening")["pid"]
        async with aiohttp.ClientSession() as session:
            message = {"message": f"long\n#sim tokens=4 gap_ms={TELLING_GAP_MS}"}
            async with session.post(f"http://127.0.0.1:{port}/chat/stream", json=message) as response:
                assert response.status == 200
                await response.content.readuntil(b"event: token")
                await asyncio.to_thread(wait_in_epoll, worker, worker)  # sent its token, waits for the next
                await asyncio.to_thread((tmp_path / "go").write_bytes, b"")  # told once: its first thread exits
                parent.wait_for_event("drain_started", QUICK_EXIT_SECONDS)
                parent.signal(signal.SIGKILL)  # told again: its last thread exits
                parent.wait(QUICK_EXIT_SECONDS)
                # The stream was live at the second telling: a drain that ends with it has not finished.
                assert not parent.events("drain_finished")
                rest = (await asyncio.wait_for(response.read(), EXIT_SECONDS)).decode()
        assert "event: done" in rest
        assert "server_shutting_down" not in rest
        parent.wait_for_event("supervisor_gone", QUICK_EXIT_SECONDS)
        assert not parent.events("drain_hurried")
    finally:
        stop_half_dead_parent(parent, group)


# A signal the tests below raise after a telling: once the loop ran its handler, it ran every
# SIGTERM handler due before it (uvloop reads its wakeup bytes in order).
MARKER = signal.SIGUSR2


def stops_of_a_worker_loop(tmp_path: Path, tell: Callable[[], Awaitable[None]]) -> int:
    """How many SIGTERMs a worker's uvloop loop takes when `tell` tells it of its supervisor's death.

    The loop runs in this process, set up as a worker's: the worker's own handler on SIGRTMIN, for a
    supervisor that is dead, and a SIGTERM handler on the loop (the drain's) that counts. Once the
    first SIGTERM came, the marker is raised from a callback queued after any the telling queued.
    """
    membership = Membership(Group(tmp_path), dead_pid())
    saved = {number: signal.getsignal(number) for number in (signal.SIGRTMIN, signal.SIGTERM, MARKER)}
    stops: list[int] = []

    async def told() -> None:
        loop = asyncio.get_running_loop()
        stopped, marked = asyncio.Event(), asyncio.Event()

        def on_sigterm() -> None:
            stops.append(signal.SIGTERM)
            stopped.set()

        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
        loop.add_signal_handler(MARKER, marked.set)
        try:
            await tell()
            await asyncio.wait_for(stopped.wait(), QUICK_EXIT_SECONDS)
            loop.call_soon(signal.raise_signal, MARKER)
            await asyncio.wait_for(marked.wait(), QUICK_EXIT_SECONDS)
        finally:
            loop.remove_signal_handler(signal.SIGTERM)
            loop.remove_signal_handler(MARKER)

    loop = uvloop.new_event_loop()
    try:
        signal.signal(signal.SIGRTMIN, membership._parent_dying)
        loop.run_until_complete(told())
    finally:
        loop.close()
        for number, handler in saved.items():
            signal.signal(number, handler)
    return len(stops)


def test_a_worker_loop_told_while_it_waits_of_its_supervisors_death_stops_as_on_one_sigterm(tmp_path: Path) -> None:
    # Told while the loop waits, the handler runs inside uvloop's signal dispatch: a SIGTERM raised
    # from there reaches the loop twice, and a second SIGTERM hurries the drain.
    main, tid = threading.main_thread().ident, threading.main_thread().native_id
    assert main is not None
    assert tid is not None

    def tell_once_it_waits() -> None:
        wait_in_epoll(os.getpid(), tid)
        signal.pthread_kill(main, signal.SIGRTMIN)

    # A thread that leaves the loop alone (not `to_thread`, whose result would wake it too, and its
    # callbacks would run the handler before uvloop's dispatch): the signal is all that wakes it.
    teller = threading.Thread(target=tell_once_it_waits, daemon=True)

    async def tell() -> None:
        teller.start()

    try:
        assert stops_of_a_worker_loop(tmp_path, tell) == 1
    finally:
        if teller.ident is not None:  # started
            teller.join(QUICK_EXIT_SECONDS)


def test_a_worker_loop_told_twice_of_its_supervisors_death_stops_as_on_one_sigterm(tmp_path: Path) -> None:
    # The kernel tells once per thread of the dying supervisor: the second must not stop it again.
    async def tell() -> None:
        signal.raise_signal(signal.SIGRTMIN)  # its handler has run when this returns
        signal.raise_signal(signal.SIGRTMIN)

    assert stops_of_a_worker_loop(tmp_path, tell) == 1


def dead_pid() -> int:
    """The pid of a process that has exited: a supervisor that died."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return dead.pid


def lone_worker(group: Group, supervisor_pid: int) -> ManagedProcess:
    """One worker of `group` started by this test, naming `supervisor_pid` as its supervisor."""
    worker = worker_argv(["--port", str(free_port()), "--config", str(TEST_CONFIG)], 0, group, 1)
    worker[worker.index("--supervisor-pid") + 1] = str(supervisor_pid)
    return ManagedProcess(worker, clean_env()).start()


def test_a_worker_whose_supervisor_died_before_it_could_watch_it_stops_without_listening() -> None:
    group = Group.create(TEST_CONFIG)
    process = lone_worker(group, dead_pid())
    try:
        assert process.wait(QUICK_EXIT_SECONDS) == 0
        process.stop()
        assert not process.events("sluice_listening")
        assert process.events("supervisor_gone")
        assert not group.path.exists()  # it was the last one out
    finally:
        process.stop()
        shutil.rmtree(group.path, ignore_errors=True)


def test_a_worker_stopped_while_it_starts_exits_zero_and_still_leaves_the_group() -> None:
    group = Group.create(None)
    os.mkfifo(group.config)  # its settings: a read that waits for this test
    process = lone_worker(group, dead_pid())
    writer: list[int] = []
    try:
        # Opening the pipe to write returns once the worker opened it to read: it is starting. Held
        # open with nothing written, it keeps the worker's read waiting.
        opened = threading.Thread(target=lambda: writer.append(os.open(group.config, os.O_WRONLY)), daemon=True)
        opened.start()
        opened.join(QUICK_EXIT_SECONDS)
        assert writer
        # Signalled only once it sleeps in the read: CPython runs a handler between bytecodes, so a
        # signal landing after its last check and before the read's system call would wait for the
        # read to return (the kernel interrupts a read that sleeps, not one still to come).
        wait_sleeping_in(process.pid, process.pid, PIPE_READS, "the read of its settings")
        process.signal(signal.SIGTERM)
        assert process.wait(QUICK_EXIT_SECONDS) == 0
        assert not group.path.exists()
    finally:
        for fd in writer:
            os.close(fd)
        process.stop()
        shutil.rmtree(group.path, ignore_errors=True)


def test_the_parent_watch_calls_back_once_the_parent_is_not_the_supervisor() -> None:
    # Where the kernel cannot signal a parent's death (not Linux), a thread checks getppid().
    gone = threading.Event()
    threading.Thread(target=watch_parent, args=(dead_pid(), 0.01, gone.set), daemon=True).start()
    assert gone.wait(QUICK_EXIT_SECONDS)


# --- The keys a replacement takes -----------------------------------------------------------------


@pytest.fixture
def group() -> Iterator[Group]:
    made = Group.create(None)
    yield made
    shutil.rmtree(made.path, ignore_errors=True)


KEYS = f'[[auth.keys]]\nname = "alpha"\nkey_sha256 = "{sha256(KEY_ALPHA)}"\n'


def test_a_sighup_file_that_loads_is_kept_for_replacements(group: Group, tmp_path: Path) -> None:
    config = Path(write_config(tmp_path / "keys.toml", KEYS))
    assert group.keep_keys(config, auth_enabled=True)
    assert group.keys.read_text() == config.read_text()


def test_a_sighup_file_that_does_not_load_leaves_the_kept_keys(group: Group, tmp_path: Path) -> None:
    config = Path(write_config(tmp_path / "keys.toml", KEYS))
    group.keep_keys(config, auth_enabled=True)
    kept = group.keys.read_text()
    append(config, "\n[auth\n")
    assert not group.keep_keys(config, auth_enabled=True)
    assert group.keys.read_text() == kept


def test_a_sighup_file_that_would_turn_the_keys_off_is_not_kept(group: Group, tmp_path: Path) -> None:
    config = Path(write_config(tmp_path / "open.toml", ""))
    assert not group.keep_keys(config, auth_enabled=True)
    assert not group.keys.exists()


def test_a_replacement_that_failed_thousands_of_times_waits_the_longest_backoff(tmp_path: Path) -> None:
    # Retried for as long as it takes, a replacement's count of quick deaths grows without end:
    # 0.1 * 2 ** 1024 overflowed after about three hours, and the supervisor stopped every worker.
    supervisor = _Supervisor(argv=[], env={}, metrics_dir=str(tmp_path), group=Group(tmp_path), count=1)
    slot = _Slot(index=0, started_at=time.monotonic(), quick_deaths=5000, served=True)

    supervisor.exited(slot, pid=1, code=2, listened=False)

    assert slot.restart_at is not None
    assert MAX_BACKOFF * 0.9 <= slot.restart_at - time.monotonic() <= MAX_BACKOFF
