"""Real third-party servers for tests: Debian's redis-server and nginx, each on a free loopback port.

Each runs in its own temporary directory with nothing persisted, is waited for on a line it
prints (never on time), and is stopped by its pid. A test may kill Redis and start it again on
the same port, as a crash and a restart would.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .processes import ROOT, ManagedProcess, clean_env, free_port

REDIS_SERVER = "/usr/bin/redis-server"
NGINX = "/usr/sbin/nginx"
# The Debian packages the suite's real servers come from, named once for tests/run and .ci/run.
PACKAGES = {REDIS_SERVER: "redis-server", NGINX: "nginx"}
SHIPPED_NGINX_CONF = ROOT / "deploy" / "nginx" / "sluice.conf"


def missing_servers() -> list[str]:
    """The Debian packages whose server binaries are not installed."""
    return [package for path, package in PACKAGES.items() if not os.access(path, os.X_OK)]


@dataclass
class RedisServer:
    """redis-server on 127.0.0.1:`port`, without persistence, in `directory`."""

    directory: Path
    port: int
    process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start (or start again, on the same port) and return once it accepts connections."""
        argv = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--protected-mode",
            "no",
        ]
        self.process = ManagedProcess(argv, clean_env()).start()
        self.process.wait_for_line(lambda line: "Ready to accept connections" in line)
        return self

    def kill(self) -> None:
        """SIGKILL: a crash, with nothing written anywhere."""
        assert self.process is not None
        self.process.signal(signal.SIGKILL)
        self.process.wait(10)
        self.process.stop()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


# Tries at a free port: another process on the machine may take the one we picked before we bind it.
PORT_TRIES = 3


def _port_taken(process: ManagedProcess | None) -> bool:
    return process is not None and any("Address already in use" in line for line in process.lines)


def start_redis(directory: Path) -> RedisServer:
    """redis-server on a free loopback port, in `directory`."""
    for attempt in range(PORT_TRIES):
        server = RedisServer(directory, free_port())
        try:
            return server.start()
        except AssertionError:
            server.stop()
            if not _port_taken(server.process) or attempt == PORT_TRIES - 1:
                raise
    raise AssertionError("unreachable")


def nginx_conf(shipped: str, *, listen_port: int, upstreams: Sequence[str], prefix: Path) -> str:
    """A whole nginx.conf around the shipped `sluice.conf`, changed only in its ports and paths.

    The shipped file is what goes into /etc/nginx/conf.d/; here its `listen` port, its access log's
    path and its `upstream` servers are replaced, and the main context (pid, logs, temp paths) points
    into `prefix`, so an unprivileged-looking nginx runs inside a test's directory.
    """
    site, listens = re.subn(r"listen\s+\d+;", f"listen 127.0.0.1:{listen_port};", shipped)
    if listens != 1:
        raise ValueError("the shipped nginx config must listen on exactly one port")
    site, logs = re.subn(r"access_log\s+\S+", f"access_log {prefix / 'access.log'}", site)
    if logs != 1:
        raise ValueError("the shipped nginx config must name exactly one access log")
    # Each server keeps the shipped servers' parameters (max_fails...): only its address changes.
    shipped_server = re.search(r"^\s*server \S+((?: [^;\n]*)?);", site, re.MULTILINE)
    if shipped_server is None:
        raise ValueError("the shipped nginx config must name its upstream servers")
    servers = "".join(f"    server {address}{shipped_server.group(1)};\n" for address in upstreams)
    site, blocks = re.subn(
        r"(upstream sluice \{\n(?:\s*#[^\n]*\n)*)(?:\s*server [^\n]*\n)+", lambda m: m.group(1) + servers, site
    )
    if blocks != 1:
        raise ValueError("the shipped nginx config must have one `upstream sluice` block with its servers first")
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {name}_temp_path {prefix / name};" for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}worker_processes 1;\n"
        f"pid {prefix / 'nginx.pid'};\n"
        "error_log stderr notice;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        # What no server of the shipped file logs itself (the shipped one logs into access.log).
        f"    access_log {prefix / 'http-access.log'};\n"
        f"{temp}\n"
        f"{site}\n"
        "}\n"
    )


@dataclass
class NginxServer:
    """nginx in the foreground, configured with the shipped sluice.conf."""

    process: ManagedProcess
    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> Path:
        """The shipped access log, written into this server's directory."""
        return self.directory / "access.log"

    def stop(self) -> None:
        self.process.stop()


def start_nginx(directory: Path, upstreams: Sequence[str]) -> NginxServer:
    """nginx on a free loopback port in front of `upstreams` (host:port), once it listens."""
    for attempt in range(PORT_TRIES):
        try:
            return _start_nginx(directory, upstreams, free_port())
        except _PortTakenError:
            if attempt == PORT_TRIES - 1:
                raise
    raise AssertionError("unreachable")


class _PortTakenError(AssertionError):
    pass


def _start_nginx(directory: Path, upstreams: Sequence[str], port: int) -> NginxServer:
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "nginx.conf"
    conf.write_text(nginx_conf(SHIPPED_NGINX_CONF.read_text(), listen_port=port, upstreams=upstreams, prefix=directory))
    argv = [NGINX, "-p", str(directory), "-e", "stderr", "-c", str(conf), "-g", "daemon off;"]
    process = ManagedProcess(argv, clean_env()).start()
    try:
        # The master opens its sockets before it starts workers: this line means it listens.
        process.wait_for_line(lambda line: "start worker process" in line)
    except AssertionError:
        process.stop()
        if _port_taken(process):
            raise _PortTakenError(f"port {port} was taken") from None
        raise
    return NginxServer(process, port, directory)
