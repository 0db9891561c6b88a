"""A SIGHUP that reaches a --workers worker while it starts: the worker survives it, and applies the
reload once its handler is in place."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psutil
import pytest

from server.workers import Group, worker_argv
from tests.support.hold import hold_at_import
from tests.support.processes import (
    STARTUP_SECONDS,
    ManagedProcess,
    Simulator,
    clean_env,
    free_port,
    write_config,
)
from tests.support.security import KEY_ALPHA, KEY_NARROW, bearer, keys_toml, sha256, start_keyed_gateway
from tests.test_workers import QUICK_EXIT_SECONDS, Running, replace_keys

# What the supervisor does as it starts a worker (`_Supervisor.start`): SIGHUP blocked until the
# worker itself unblocks it.
HOLDING_SIGHUP = (
    "import os, signal, sys; signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP}); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def reloads(process: ManagedProcess, pid: int) -> int:
    """How many times worker `pid` logged that it took the gateway keys of a SIGHUP."""
    return len([e for e in process.events("gateway_keys_reloaded") if e["pid"] == pid])


def settled(running: Running) -> bool:
    """Whether a replacement listens, or failed to start."""
    return running.listening() >= 3 or bool(running.process.events("worker_restart_failed"))


def hup_once(running: Running, survivor: int) -> None:
    """SIGHUP the supervisor; return once the worker `survivor` took it, or the group settled."""
    process = running.process
    taken = reloads(process, survivor)
    process.signal(signal.SIGHUP)
    process.wait_for_line(lambda _: reloads(process, survivor) > taken or settled(running))


async def test_a_replacement_that_gets_sighups_while_it_starts_survives_and_serves_the_reloaded_keys(
    simulator: Simulator, tmp_path: Path
) -> None:
    # Only a worker started while `replacing` exists is held: the replacement, not the first two.
    # Held at its first import of `server`, it has not run a line of its own: nothing but the mask
    # it started with (`_Supervisor.start`) keeps a SIGHUP from killing it there.
    replacing = tmp_path / "replacing"
    hold = hold_at_import(
        tmp_path, "server", f"'--worker-index' in sys.argv and __import__('os').path.exists({str(replacing)!r})"
    )
    with start_keyed_gateway(tmp_path, simulator, env=hold.environ, args=("--workers", "2")) as gateway:
        process = gateway.process
        process.wait_for_line(lambda _: len(process.events("sluice_listening")) >= 2)
        first = psutil.Process(process.pid).children()[0].cmdline()
        running = Running(process, Path(first[first.index("--group-dir") + 1]))
        try:
            victim, survivor = running.pid(0), running.pid(1)
            replace_keys(tmp_path / "keys.toml", keys_toml(include_alpha=False))
            replacing.touch()
            os.kill(victim, signal.SIGKILL)
            with hold.held(STARTUP_SECONDS):
                replacing.unlink()  # a later start (were this one to die) runs free
                # The supervisor signals its workers in order: the replacement (worker 0) has its
                # SIGHUP once the survivor (worker 1) took its own.
                hup_once(running, survivor)
            # More, one after another, for as long as the replacement starts.
            while not settled(running):
                hup_once(running, survivor)

            assert not process.events("worker_restart_failed")
            replacement = running.pid(0)
            assert replacement != victim
            # The SIGHUPs held while it started are taken once it listens.
            process.wait_for_event("gateway_keys_reloaded", timeout=QUICK_EXIT_SECONDS, pid=replacement)
            for index in (0, 1):
                async with running.session(index) as http:
                    async with http.get("/v1/models", headers=bearer(KEY_ALPHA)) as response:
                        assert response.status == 401
                    async with http.get("/v1/models", headers=bearer(KEY_NARROW)) as response:
                        assert response.status == 200
            assert running.pid(0) == replacement
        finally:
            running.stop()


def key_toml(name: str, key: str) -> str:
    return f'[[auth.keys]]\nname = "{name}"\nkey_sha256 = "{sha256(key)}"\n'


def swap(config: Path, keys: str) -> bytes:
    """Make `config` config/test.toml with `keys`; what it held."""
    held = config.read_bytes()
    write_config(config, keys)
    return held


@pytest.fixture
def starting_group() -> Iterator[Group]:
    """A group whose settings copy is a pipe: a worker reading it waits, still starting, for the test."""
    group = Group.create(None)
    os.mkfifo(group.config)
    yield group
    shutil.rmtree(group.path, ignore_errors=True)


async def test_a_sighup_that_came_while_the_worker_read_its_settings_is_applied_once_it_listens(
    starting_group: Group, tmp_path: Path
) -> None:
    config = Path(write_config(tmp_path / "keys.toml", key_toml("alpha", KEY_ALPHA)))
    port = free_port()
    # A worker of this test's process (its supervisor), started as the supervisor starts one.
    worker = worker_argv(["--port", str(port), "--config", str(config)], 0, starting_group, 1)
    worker[worker.index("--supervisor-pid") + 1] = str(os.getpid())
    process = ManagedProcess([sys.executable, "-c", HOLDING_SIGHUP, *worker], clean_env()).start()
    writer: list[int] = []
    try:
        # Returns once the worker opened the pipe to read its settings: it is starting.
        opened = threading.Thread(
            target=lambda: writer.append(os.open(starting_group.config, os.O_WRONLY)), daemon=True
        )
        opened.start()
        opened.join(QUICK_EXIT_SECONDS)
        assert writer
        # Its settings have alpha; the file a reload reads, only narrow.
        settings = swap(config, key_toml("narrow", KEY_NARROW))
        process.signal(signal.SIGHUP)
        os.write(writer[0], settings)
        os.close(writer.pop())

        process.wait_for_event("sluice_listening")
        process.wait_for_event("gateway_keys_reloaded", timeout=QUICK_EXIT_SECONDS)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            async with http.get("/v1/models", headers=bearer(KEY_ALPHA)) as response:
                assert response.status == 401
            async with http.get("/v1/models", headers=bearer(KEY_NARROW)) as response:
                assert response.status == 200
    finally:
        for fd in writer:
            os.close(fd)
        process.stop()
