"""Run Sluice and the simulator as real processes, and wait on what they print, never on time."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
STARTUP_SECONDS = 20.0


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment without any upstream credentials, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "AI_INTEGRATIONS_OPENAI_API_KEY",
            "OPENAI_API_KEY",
            "AI_INTEGRATIONS_OPENAI_BASE_URL",
            "OPENAI_BASE_URL",
        }
        and not k.startswith("SLUICE_")
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@dataclass
class ManagedProcess:
    """A child process whose output lines are collected by a thread and can be waited for."""

    argv: list[str]
    env: dict[str, str]
    lines: list[str] = field(default_factory=list)
    process: subprocess.Popen[str] | None = None
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _reader: threading.Thread | None = None
    # In a session (and process group) of its own: a test may signal its whole group then.
    new_session: bool = False

    def start(self) -> ManagedProcess:
        self.process = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=self.new_session,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """Every JSON log line printed so far, optionally only those with `event == name`."""
        found = []
        for line in list(self.lines):
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if name is None or event.get("event") == name:
                found.append(event)
        return found

    def wait_for_line(self, matches: Callable[[str], bool], timeout: float = STARTUP_SECONDS) -> str:
        """Block until a printed line satisfies `matches`; fail if the process exits first."""
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if matches(line):
                        return line
                seen = len(self.lines)
                assert self.process is not None
                if self.process.poll() is not None and not (self._reader and self._reader.is_alive()):
                    raise AssertionError(f"process exited ({self.process.returncode}):\n" + "\n".join(self.lines[-40:]))
                if not self._changed.wait(timeout):
                    raise AssertionError("timed out waiting for output:\n" + "\n".join(self.lines[-40:]))

    def wait_for_event(self, name: str, timeout: float = STARTUP_SECONDS, **fields: Any) -> dict[str, Any]:
        """Block until a JSON log event named `name` with the given field values is printed."""

        def matches(line: str) -> bool:
            if not line.startswith("{"):
                return False
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                return False
            return bool(event.get("event") == name and all(event.get(k) == v for k, v in fields.items()))

        return dict(json.loads(self.wait_for_line(matches, timeout)))

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        """End the process (SIGTERM, then SIGKILL) and the reader."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self._reader is not None:
            self._reader.join(5)
        # A grandchild that outlived the process (a worker the supervisor never signalled) keeps the
        # pipe open and the reader blocked in read(); closing the pipe under it would block here for good.
        if self.process.stdout is not None and not (self._reader is not None and self._reader.is_alive()):
            self.process.stdout.close()


@dataclass
class Simulator:
    """`python -m server.simulator --control` on a loopback port."""

    process: ManagedProcess
    url: str

    @property
    def base_url(self) -> str:
        return self.url + "/v1"


def start_simulator(*args: str) -> Simulator:
    """Start the simulator, with its test-only /_sim routes, and return once it listens."""
    process = ManagedProcess(
        [sys.executable, "-m", "server.simulator", "--host", "127.0.0.1", "--port", "0", "--control", *args],
        clean_env(),
    ).start()
    line = process.wait_for_line(lambda text: text.startswith("simulator listening on "))
    return Simulator(process, line.removeprefix("simulator listening on ").strip())


@dataclass
class Gateway:
    """`python run.py` on a loopback port; `with` it to stop it at the block's end."""

    process: ManagedProcess
    url: str

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.process.stop()


def start_gateway(
    *,
    upstream: Simulator | None = None,
    env: Mapping[str, str] | None = None,
    args: tuple[str, ...] = (),
    config: str = "config/test.toml",
) -> Gateway:
    """Start the gateway (against `upstream` with a key, or simulated without) once it listens."""
    port = free_port()
    extra = dict(env or {})
    if upstream is not None:
        extra.setdefault("AI_INTEGRATIONS_OPENAI_API_KEY", "sk-test-key-never-logged")
        extra.setdefault("AI_INTEGRATIONS_OPENAI_BASE_URL", upstream.base_url)
    argv = [sys.executable, "run.py", "--host", "127.0.0.1", "--port", str(port), "--config", config, *args]
    process = ManagedProcess(argv, clean_env(extra)).start()
    process.wait_for_event("sluice_listening")
    return Gateway(process, f"http://127.0.0.1:{port}")


def start_hostile_upstream() -> Simulator:
    """The misbehaving upstream of tests/support/hostile_upstream.py, once it listens."""
    process = ManagedProcess(
        [sys.executable, "-m", "tests.support.hostile_upstream", "--port", "0"], clean_env()
    ).start()
    line = process.wait_for_line(lambda text: text.startswith("hostile upstream listening on "))
    return Simulator(process, line.removeprefix("hostile upstream listening on ").strip())


def write_config(path: Path, extra: str) -> str:
    """config/test.toml with `extra` TOML appended, written to `path`; the path, for `start_gateway`."""
    path.write_text((ROOT / "config" / "test.toml").read_text() + "\n" + extra)
    return str(path)
