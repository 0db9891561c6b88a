"""A SIGHUP at the very end of a process's shutdown, after the key reload's handler is gone, is ignored:
the process still exits 0 (its default action would kill it). A worker of a --workers group and a single
process, each held at its exit (an `atexit` hook waiting on a pipe) while the test sends the signal."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.processes import start_gateway
from tests.test_workers import EXIT_SECONDS, QUICK_EXIT_SECONDS, start_listening


def exit_hook(tmp_path: Path, condition: str) -> tuple[dict[str, str], Path]:
    """An environment in which a process meeting `condition` waits, as it exits, until the returned pipe closes."""
    pipe = tmp_path / "at-exit"
    os.mkfifo(pipe)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import atexit, sys\n"
        "def _hold():\n"
        f"    with open({str(pipe)!r}, 'rb') as pipe:\n"
        "        pipe.read()\n"
        f"if {condition}:\n"
        "    atexit.register(_hold)\n",
        encoding="utf-8",
    )
    return {"PYTHONPATH": str(hook)}, pipe


@contextmanager
def held_at_exit(pipe: Path) -> Iterator[None]:
    """Return once the process opened `pipe` (it is exiting: it logged all it will); let it go at the block's end."""
    writer: list[int] = []
    opened = threading.Thread(target=lambda: writer.append(os.open(pipe, os.O_WRONLY)), daemon=True)
    opened.start()
    opened.join(EXIT_SECONDS)
    try:
        assert writer, "the process did not reach its exit"
        yield
    finally:
        if not writer:  # free the thread still waiting to open it
            os.close(os.open(pipe, os.O_RDONLY | os.O_NONBLOCK))
            opened.join(QUICK_EXIT_SECONDS)
        for fd in writer:
            os.close(fd)


def test_a_worker_sent_sighup_as_it_exits_after_a_stop_exits_zero(tmp_path: Path) -> None:
    environ, pipe = exit_hook(
        tmp_path, "'--worker-index' in sys.argv and sys.argv[sys.argv.index('--worker-index') + 1] == '0'"
    )
    running = start_listening(["--config", "config/test.toml"], **environ)
    try:
        worker = running.pid(0)
        running.process.signal(signal.SIGTERM)
        with held_at_exit(pipe):
            os.kill(worker, signal.SIGHUP)
        assert running.process.wait(EXIT_SECONDS) == 0
        running.process.stop()
        assert {e["worker_index"]: e["code"] for e in running.process.events("worker_exited")} == {0: 0, 1: 0}
    finally:
        running.stop()


def test_a_single_process_sent_sighup_as_it_exits_after_a_stop_exits_zero(tmp_path: Path) -> None:
    environ, pipe = exit_hook(tmp_path, "sys.argv[0].endswith('run.py')")
    with start_gateway(env=environ) as gateway:
        gateway.process.signal(signal.SIGTERM)
        with held_at_exit(pipe):
            os.kill(gateway.process.pid, signal.SIGHUP)
        assert gateway.process.wait(EXIT_SECONDS) == 0
