"""A SIGHUP that reaches Sluice while it starts, before any reload handler is in place, is ignored:
the process goes on to listen and serve (SIGHUP's default action would end it; a config-management
tool may send its reload as a deploy starts the process).

Each process is held at a point of its start-up, the first import of a module (a `sitecustomize`
import hook reading a pipe), while the test sends SIGHUP, then let go: the signal lands inside the
window every time, never by luck of timing. The window a hook cannot reach, the interpreter's own
start before run.py's first line, is out of any Python code's reach.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.support.hold import Hold, hold_at_import
from tests.support.processes import STARTUP_SECONDS, ManagedProcess, clean_env, free_port

pytestmark = pytest.mark.timeout(90)


async def livez_after_a_sighup_while_held(hold: Hold, command: list[str], *options: str, listening: int = 1) -> int:
    """Start the gateway as `command`, send it SIGHUP while `hold` holds it, let it go; once `listening`
    processes listen, the status of its GET /livez."""
    port = free_port()
    argv = [sys.executable, *command, "--host", "127.0.0.1", "--port", str(port), "--config", "config/test.toml"]
    process = ManagedProcess([*argv, *options], clean_env(hold.environ)).start()
    try:
        with hold.held(STARTUP_SECONDS):
            process.signal(signal.SIGHUP)
        process.wait_for_line(lambda _: len(process.events("sluice_listening")) >= listening)
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/livez") as response:
            return response.status
    finally:
        process.stop()


async def test_a_sighup_while_run_py_imports_the_gateway_is_ignored_and_it_serves(tmp_path: Path) -> None:
    """Held at its first import of the `server` package: run.py's first lines have run, nothing else."""
    assert await livez_after_a_sighup_while_held(hold_at_import(tmp_path, "server"), ["run.py"]) == 200


async def test_a_sighup_while_the_sluice_command_sets_up_is_ignored_and_it_serves(tmp_path: Path) -> None:
    """The installed `sluice` script imports server.cli before `main` runs: held in `serve`, at its loop's
    import (uvloop), after the settings and the app are built and before the app's startup installs the
    reload handler."""
    # What pip writes as the `sluice` console script (pyproject.toml, [project.scripts]).
    script = "import sys; from server.cli import main; sys.exit(main())"
    assert await livez_after_a_sighup_while_held(hold_at_import(tmp_path, "uvloop"), ["-c", script]) == 200


async def test_a_sighup_while_the_workers_supervisor_starts_is_ignored_and_its_workers_serve(tmp_path: Path) -> None:
    """The supervisor (the one process given --workers) held at its first import of `server`: no worker yet."""
    hold = hold_at_import(tmp_path, "server", "'--workers' in sys.argv")
    assert await livez_after_a_sighup_while_held(hold, ["run.py"], "--workers", "2", listening=2) == 200
