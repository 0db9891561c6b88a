"""Start the processes under test (upstream, gateway) and the load generator, each its own process.

Every child inherits this process's open-file limit, raised to its hard limit first: thousands of
streams need thousands of descriptors in the load generator, the gateway and the upstream alike.
Their output goes to log files under a run directory, read only to find the upstream's address
and to explain a failure.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from server.connections import reserve_descriptors

from .config import LoadConfig

ROOT = Path(__file__).resolve().parents[1]
GATEWAY_SCRIPT = ROOT / "run.py"
GATEWAY_CONFIG = ROOT / "config" / "test.toml"
STARTUP_S = 30.0
STOP_S = 15.0
# The upstream key the gateway sends; both simulated upstreams accept any.
UPSTREAM_KEY = "sk-bench-not-a-secret"


class StartupError(RuntimeError):
    """A process under test did not come up; the message ends with its last log lines."""


# The most streams a harness process (upstream, load generator) holds at once, with room to spare.
HARNESS_STREAMS = 8_000


def raise_fd_limit() -> int:
    """Raise this process's open-file limit (inherited by every child) to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def prepare_harness_process() -> None:
    """Keep the upstream's and the load generator's own pauses out of every run's figures.

    Both run on uvloop, whose resolver threads make every doubling of a descriptor table wait for
    an RCU grace period: left to grow, theirs stopped each process at about 250 and 500 streams
    (server/connections.py `reserve_descriptors`, which Sluice calls too). And Python's collector,
    at its default thresholds, paused them at fixed stream counts as their live set grew. Either
    put 5-30 ms on the first tokens of the streams opening then, in the direct runs and the
    proxies' alike. Both processes live for one run, so their few cycles are left uncollected. The
    pass-through is left as it is: it is the simplest aiohttp proxy, and pays that as any does.
    """
    raise_fd_limit()
    reserve_descriptors(HARNESS_STREAMS)
    gc.freeze()
    gc.disable()


@dataclass
class Service:
    """A running child process with a loopback URL."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.process.pid

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within STOP_S seconds."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without upstream credentials or Sluice settings, plus `extra`."""
    dropped = {"AI_INTEGRATIONS_OPENAI_API_KEY", "AI_INTEGRATIONS_OPENAI_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL"}
    env = {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("SLUICE_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def _spawn(name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> tuple[subprocess.Popen[bytes], Path]:
    log = log_dir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    return process, log


def _tail(log: Path, lines: int = 20) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


class Upstream(StrEnum):
    """Which simulated upstream serves the runs."""

    BENCH = "bench"  # bench/upstream: asyncio.Protocol and pre-encoded frames, cheap per chunk
    SIMULATOR = "simulator"  # server/simulator: the project's aiohttp simulator


UPSTREAM_COMMANDS = {
    Upstream.BENCH: (["-m", "bench.upstream"], "bench upstream listening on "),
    Upstream.SIMULATOR: (["-m", "server.simulator", "--control"], "simulator listening on "),
}


def start_upstream(kind: Upstream, log_dir: Path, name: str) -> Service:
    """The simulated upstream on a free loopback port, once it prints its address."""
    args, ready = UPSTREAM_COMMANDS[kind]
    argv = [sys.executable, *args, "--host", "127.0.0.1", "--port", "0"]
    process, log = _spawn(name, argv, child_env({}), log_dir)
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith(ready):
                return Service(str(kind), process, line.removeprefix(ready).strip(), log)
        if process.poll() is not None:
            break
        time.sleep(0.02)
    process.kill()
    raise StartupError(f"the {kind} upstream did not start:\n{_tail(log)}")


def start_passthrough(upstream: Service, log_dir: Path, name: str = "passthrough") -> Service:
    """`python -m bench.passthrough` in front of `upstream`, once it accepts connections."""
    port = _free_port()
    argv = [sys.executable, "-m", "bench.passthrough", "--upstream", upstream.url, "--port", str(port)]
    process, log = _spawn(name, argv, child_env({}), log_dir)
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return Service(name, process, f"http://127.0.0.1:{port}", log)
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise StartupError(f"the pass-through did not start:\n{_tail(log)}")


def start_gateway(upstream: Service, log_dir: Path, name: str = "gateway", workers: int = 1) -> Service:
    """`python run.py` against `upstream`, logging warnings only, once /livez answers (from every worker)."""
    port = _free_port()
    env = child_env(
        {
            "AI_INTEGRATIONS_OPENAI_API_KEY": UPSTREAM_KEY,
            "AI_INTEGRATIONS_OPENAI_BASE_URL": upstream.url + "/v1",
            # Per-request log lines would cost the gateway CPU the benchmark means to measure.
            "SLUICE_LOGGING_LEVEL": "warning",
        }
    )
    argv = [
        sys.executable,
        str(GATEWAY_SCRIPT),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--config",
        str(GATEWAY_CONFIG),
    ]
    if workers > 1:
        argv += ["--workers", str(workers)]
    process, log = _spawn(name, argv, env, log_dir)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(url + "/livez", timeout=1) as response:
                if response.status == 200 and _workers_up(process.pid, workers):
                    return Service(name, process, url, log)
        except OSError:
            pass
        time.sleep(0.05)
    process.kill()
    raise StartupError(f"the gateway did not start:\n{_tail(log)}")


def run_loadgen(config: LoadConfig, log_dir: Path, name: str, timeout: float) -> dict[str, Any]:
    """Run `python -m bench.loadgen` with `config` and return the JSON it wrote."""
    out = log_dir / f"{name}.json"
    argv = [sys.executable, "-m", "bench.loadgen", "--json-config", config.to_json(), "--out", str(out)]
    stderr = log_dir / f"{name}.stderr.log"
    with stderr.open("wb") as err:
        done = subprocess.run(
            argv, cwd=ROOT, env=child_env({}), stdout=subprocess.DEVNULL, stderr=err, timeout=timeout, check=False
        )
    if done.returncode != 0 or not out.exists():
        raise StartupError(f"the load generator failed ({done.returncode}):\n{_tail(stderr)}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def _workers_up(pid: int, workers: int) -> bool:
    """True when a `--workers` supervisor has all its workers (a single process always has)."""
    if workers == 1:
        return True
    import psutil

    children = psutil.Process(pid).children()
    return len(children) >= workers and all(
        any(c.status == psutil.CONN_LISTEN for c in child.net_connections("tcp")) for child in children
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
