"""A --workers group's directory under the temporary directory (`sluice-workers-*`) is gone once its
supervisor exits, however it exits short of SIGKILL; a killed supervisor's workers remove it when they
go (here while they start; once they serve, tests/test_workers.py)."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import aiohttp
import psutil
import pytest

from server.worker_proxy import SOCKET_PATH_LIMIT
from tests.support.processes import ROOT, ManagedProcess, clean_env, free_port
from tests.test_workers import EXIT_SECONDS, QUICK_EXIT_SECONDS


@pytest.fixture
def scratch() -> Iterator[Path]:
    """The temporary directory (TMPDIR) of the supervisors a test starts: where their groups are made.

    Short: a worker's Unix socket path in it must fit in 108 bytes, which one under tmp_path may not.
    """
    made = Path(tempfile.mkdtemp(prefix="sluice-test-"))
    yield made
    shutil.rmtree(made, ignore_errors=True)


def groups(scratch: Path) -> list[Path]:
    """The group directories in `scratch`."""
    return sorted(scratch.glob("sluice-workers-*"))


def supervisor(
    scratch: Path, *args: str, port: int | None = None, environ: Mapping[str, str] | None = None
) -> ManagedProcess:
    """`run.py --workers 2 ...args`, its temporary directory `scratch`."""
    argv = [sys.executable, "run.py", "--port", str(port or free_port()), "--workers", "2", *args]
    return ManagedProcess(argv, clean_env({"TMPDIR": str(scratch), **(environ or {})})).start()


@pytest.fixture
def sigterm_after_the_group_directory(tmp_path: Path) -> dict[str, str]:
    """An environment in which the supervisor sends itself SIGTERM just after it made its group's directory."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os, signal, tempfile\n"
        "_mkdtemp = tempfile.mkdtemp\n"
        "def mkdtemp(*args, **kwargs):\n"
        "    made = _mkdtemp(*args, **kwargs)\n"
        "    if kwargs.get('prefix') == 'sluice-workers-':\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return made\n"
        "tempfile.mkdtemp = mkdtemp\n",
        encoding="utf-8",
    )
    return {"PYTHONPATH": str(hook)}


def test_a_group_stopped_with_sigterm_leaves_no_directory(scratch: Path) -> None:
    process = supervisor(scratch, "--config", "config/test.toml")
    try:
        process.wait_for_line(lambda _: len(process.events("sluice_listening")) >= 2)
        assert len(groups(scratch)) == 1
        process.signal(signal.SIGTERM)
        assert process.wait(EXIT_SECONDS) == 0
        assert groups(scratch) == []
    finally:
        process.stop()


def test_a_group_that_gives_up_on_a_start_up_mistake_leaves_no_directory(scratch: Path, taken_port: int) -> None:
    process = supervisor(scratch, "--config", "config/test.toml", port=taken_port)
    try:
        assert process.wait(EXIT_SECONDS) == 2
        process.stop()
        assert process.events("workers_gave_up")
        assert groups(scratch) == []
    finally:
        process.stop()


def test_a_stop_signal_just_after_the_group_directory_is_made_stops_the_group_and_removes_it(
    scratch: Path, sigterm_after_the_group_directory: dict[str, str]
) -> None:
    process = supervisor(scratch, "--config", "config/test.toml", environ=sigterm_after_the_group_directory)
    try:
        code = process.wait(EXIT_SECONDS)
        process.stop()
        assert groups(scratch) == []
        assert code == 0  # it took the signal as any other: no worker was left running
        assert process.events("supervisor_stopped")
    finally:
        process.stop()


def test_a_config_file_the_group_cannot_copy_is_refused_in_one_line_and_leaves_no_directory(
    scratch: Path, tmp_path: Path
) -> None:
    # A pipe (as `--config <(...)` gives): the supervisor's settings read it, a copy for the workers cannot.
    config = tmp_path / "config.toml"
    os.mkfifo(config)
    process = supervisor(scratch, "--config", str(config))
    # Opening the pipe to write returns once the supervisor opened it to read.
    writer = threading.Thread(
        target=config.write_bytes, args=((ROOT / "config" / "test.toml").read_bytes(),), daemon=True
    )
    writer.start()
    try:
        writer.join(QUICK_EXIT_SECONDS)
        assert process.wait(EXIT_SECONDS) == 2
        process.stop()
        (refusal,) = [line for line in process.lines if line.startswith("sluice: ")]
        assert f"--config {config}" in refusal
        assert "named pipe" in refusal
        assert not any("Traceback" in line for line in process.lines)
        assert groups(scratch) == []
    finally:
        process.stop()


def test_workers_whose_supervisor_is_killed_while_they_start_remove_the_group_directory(scratch: Path) -> None:
    process = supervisor(scratch, "--config", "config/test.toml")
    try:
        process.wait_for_line(lambda _: len(process.events("worker_started")) >= 2)
        workers = [psutil.Process(e["worker_pid"]) for e in process.events("worker_started")]
        assert len(groups(scratch)) == 1
        os.kill(process.pid, signal.SIGKILL)
        _, alive = psutil.wait_procs(workers, timeout=EXIT_SECONDS)
        assert alive == []
        assert groups(scratch) == []
    finally:
        process.stop()


def longest_socket_path(tmpdir: Path, workers: int = 2) -> int:
    """The length in bytes of the last worker's Unix socket path in a group made in `tmpdir`."""
    return len(os.fsencode(tmpdir / "sluice-workers-12345678" / "peers" / f"worker-{workers - 1}.sock"))


def tmpdir_of(scratch: Path, socket_path_length: int) -> Path:
    """A directory in `scratch` long enough that the group's longest socket path is `socket_path_length` bytes."""
    made = scratch / ("t" * (socket_path_length - longest_socket_path(scratch) - 1))
    made.mkdir()
    assert longest_socket_path(made) == socket_path_length
    return made


def test_a_temporary_directory_too_long_for_the_workers_sockets_is_refused_in_one_line(scratch: Path) -> None:
    tmpdir = tmpdir_of(scratch, SOCKET_PATH_LIMIT + 1)
    process = supervisor(tmpdir, "--config", "config/test.toml")
    try:
        assert process.wait(EXIT_SECONDS) == 2
        process.stop()
        (refusal,) = [line for line in process.lines if line.startswith("sluice: ")]
        length = len(os.fsencode(tmpdir))
        assert f"temporary directory {tmpdir} (TMPDIR) is {length} bytes long" in refusal
        assert f"paths {SOCKET_PATH_LIMIT + 1} bytes, over the limit of {SOCKET_PATH_LIMIT}" in refusal
        assert refusal.endswith(f"set TMPDIR to a directory of at most {length - 1} bytes")
        assert not any("Traceback" in line for line in process.lines)
        assert not process.events("worker_started")
        assert groups(tmpdir) == []
    finally:
        process.stop()


async def test_a_temporary_directory_as_long_as_the_workers_sockets_allow_serves_on_them(scratch: Path) -> None:
    tmpdir = tmpdir_of(scratch, SOCKET_PATH_LIMIT)
    process = supervisor(tmpdir, "--config", "config/test.toml")
    try:
        process.wait_for_line(lambda _: len(process.events("sluice_listening")) >= 2)
        (group,) = groups(tmpdir)
        longest = group / "peers" / "worker-1.sock"
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(longest))) as http:
            async with http.get("http://worker/livez") as response:
                assert response.status == 200
        process.signal(signal.SIGTERM)
        assert process.wait(EXIT_SECONDS) == 0
    finally:
        process.stop()
