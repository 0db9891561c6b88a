"""A SIGHUP that reaches Sluice while it starts, before any reload handler is in place, is ignored:
the process goes on to listen and serve (SIGHUP's default action would end it; a config-management
tool may send its reload as a deploy starts the process).

Each process is held at a point of its start-up, the first import of a module (a `sitecustomize`
import hook reading a pipe), while the test sends SIGHUP, then let go: the signal lands inside the
window every time, never by luck of timing. The window a hook cannot reach, the interpreter's own
start before run.py's first line, is out of any Python code's reach.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest

from tests.support.processes import STARTUP_SECONDS, ManagedProcess, clean_env, free_port

pytestmark = pytest.mark.timeout(90)


def hold_at_import(tmp_path: Path, module: str, condition: str = "True") -> tuple[dict[str, str], Path]:
    """An environment where a process meeting `condition` waits at its first import of `module` till the pipe closes."""
    pipe = tmp_path / "held"
    os.mkfifo(pipe)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Hold:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name == {module!r}:\n"
        "            sys.meta_path.remove(self)\n"
        f"            with open({str(pipe)!r}, 'rb') as pipe:\n"
        "                pipe.read()\n"
        "        return None\n"
        f"if {condition}:\n"
        "    sys.meta_path.insert(0, _Hold())\n",
        encoding="utf-8",
    )
    return {"PYTHONPATH": str(hook)}, pipe


@contextmanager
def held(pipe: Path) -> Iterator[None]:
    """Return once the process opened `pipe` (it waits there, starting); let it go at the block's end."""
    writer: list[int] = []
    opened = threading.Thread(target=lambda: writer.append(os.open(pipe, os.O_WRONLY)), daemon=True)
    opened.start()
    opened.join(STARTUP_SECONDS)
    try:
        assert writer, "the process never reached the import it is held at"
        yield
    finally:
        if not writer:  # free the thread still waiting to open it
            os.close(os.open(pipe, os.O_RDONLY | os.O_NONBLOCK))
            opened.join(STARTUP_SECONDS)
        for fd in writer:
            os.close(fd)


async def serves(port: int) -> int:
    """The status of GET /livez on `port`."""
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/livez") as response:
        return response.status


def gateway_argv(port: int) -> list[str]:
    return ["--host", "127.0.0.1", "--port", str(port), "--config", "config/test.toml"]


async def test_a_sighup_while_run_py_imports_the_gateway_is_ignored_and_it_serves(tmp_path: Path) -> None:
    """Held at its first import of the `server` package: run.py's first lines have run, nothing else."""
    environ, pipe = hold_at_import(tmp_path, "server")
    port = free_port()
    process = ManagedProcess([sys.executable, "run.py", *gateway_argv(port)], clean_env(environ)).start()
    try:
        with held(pipe):
            process.signal(signal.SIGHUP)
        process.wait_for_event("sluice_listening")
        assert await serves(port) == 200
    finally:
        process.stop()


async def test_a_sighup_while_the_sluice_command_sets_up_is_ignored_and_it_serves(tmp_path: Path) -> None:
    """The installed `sluice` script imports server.cli before `main` runs: held in `serve`, at its loop's
    import (uvloop), after the settings and the app are built and before the app's startup installs the
    reload handler."""
    environ, pipe = hold_at_import(tmp_path, "uvloop")
    port = free_port()
    # What pip writes as the `sluice` console script (pyproject.toml, [project.scripts]).
    script = "import sys; from server.cli import main; sys.exit(main())"
    process = ManagedProcess([sys.executable, "-c", script, *gateway_argv(port)], clean_env(environ)).start()
    try:
        with held(pipe):
            process.signal(signal.SIGHUP)
        process.wait_for_event("sluice_listening")
        assert await serves(port) == 200
    finally:
        process.stop()


async def test_a_sighup_while_the_workers_supervisor_starts_is_ignored_and_its_workers_serve(tmp_path: Path) -> None:
    """The supervisor (the one process given --workers) held at its first import of `server`: no worker yet."""
    environ, pipe = hold_at_import(tmp_path, "server", "'--workers' in sys.argv")
    port = free_port()
    argv = [sys.executable, "run.py", *gateway_argv(port), "--workers", "2"]
    process = ManagedProcess(argv, clean_env(environ)).start()
    try:
        with held(pipe):
            process.signal(signal.SIGHUP)
        process.wait_for_line(lambda _: len(process.events("sluice_listening")) >= 2)
        assert await serves(port) == 200
    finally:
        process.stop()
