"""The `sluice` command (also `python run.py`): parse the command line, load settings, serve.

Every start-up mistake ends the process with one line on stderr naming the setting, where its
value came from and what was expected, and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

import structlog
from aiohttp import web

from . import __version__
from .app import create_app, upstreams
from .connections import connection_limit, raise_open_file_limit, reserve_descriptors
from .contexts import ignore_from_now
from .logs import LossyStream, configure_logging, loggable_url
from .settings import AuthSettings, Settings, SettingsError, SettingsSource, load_settings
from .worker_proxy import WorkerIdentity, identity_from_args
from .workers import Group, Membership, supervise

# Seconds aiohttp waits for handlers after the drain; the drain has ended every stream already.
SHUTDOWN_TIMEOUT = 5.0
# Net new container objects between young collections (Python's default: 700); see serve().
GC_YOUNG_THRESHOLD = 20_000
DEFAULT_PORT = 8080
# Exit status of every start-up mistake, as argparse uses for a wrong flag.
USAGE_ERROR = 2
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
# Errors binding the listening socket that are the operator's to fix, not a bug.
_BIND_ERRORS = frozenset({errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL})


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a wrong flag is one line (no usage dump) like every other start-up error."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"sluice: {message} (see --help)\n")


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535, got {text!r}")
    return int(text)


def _worker_count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of workers, 1 or more, got {text!r}")
    return int(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; see `sluice --help`."""
    parser = _OneLineParser(description="Sluice: a streaming gateway for OpenAI-compatible chat models.")
    parser.add_argument("--version", action="version", version=f"sluice {__version__}")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument(
        "--port", type=_port, default=None, help=f"port to listen on (default: $PORT, else {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--config", type=Path, default=None, help="TOML file overlaid on config/default.toml (default: none)"
    )
    parser.add_argument(
        "--workers",
        type=_worker_count,
        default=1,
        help="worker processes sharing the port with SO_REUSEPORT (default: 1)",
    )
    parser.add_argument(
        "--log-format",
        choices=("auto", "json", "console"),
        default=None,
        help="log format (default: from config; auto = JSON unless stdout is a terminal)",
    )
    # Set by the --workers supervisor for each worker it starts.
    parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--peer-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-count", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--supervisor-pid", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--group-dir", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Load settings, then serve until SIGTERM or SIGINT has drained the process."""
    ignore_sighup_while_starting()
    args = parse_args(argv)
    # Set by the --workers supervisor: this process is one of its workers.
    member = (
        Membership(Group(args.group_dir), args.supervisor_pid)
        if args.group_dir is not None and args.supervisor_pid is not None
        else None
    )
    try:
        return _run(args, argv, member)
    finally:
        if member is not None:
            member.leave()


def ignore_sighup_while_starting() -> None:
    """Ignore SIGHUP until its handler is in place: its default action would end a process that starts.

    The key reload's handler (server/contexts.py) or the --workers supervisor's loop takes over
    from this. A SIGHUP the process started with blocked (a --workers worker: `_Supervisor.start`)
    stays blocked: ignoring it would discard one pending, a reload the worker must take once it
    listens. run.py does the same before its imports; the `sluice` script gets here after them.
    """
    if signal.SIGHUP not in signal.pthread_sigmask(signal.SIG_BLOCK, ()):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _run(args: argparse.Namespace, argv: list[str] | None, member: Membership | None) -> int:
    supervised = member.join() if member is not None else True
    keys: AuthSettings | None = None
    try:
        if member is not None:
            settings, keys = member.group.worker_settings(args.config)
        else:
            settings = load_settings(args.config)
    except SettingsError as exc:
        return _refuse(str(exc))
    log_stream = configure_logging(args.log_format or settings.logging.format, settings.logging.level)
    if member is not None:
        member.metrics_dir = settings.process.metrics_dir
    if not supervised:
        return 0  # its supervisor died while it started: nobody would stop it; `leave` says so
    if args.workers > 1:
        try:
            return supervise(args.workers, sys.argv[1:] if argv is None else argv, settings, args.config)
        except SettingsError as exc:
            return _refuse(str(exc))
    port, port_source = _listen_port(args.port, settings)
    # With Redis every worker reads every stream from there: no relay between workers is needed.
    worker = (
        identity_from_args(args.worker_index, args.peer_dir, args.worker_count) if settings.redis.url is None else None
    )
    try:
        serve(
            settings,
            args.host,
            port,
            reuse_port=args.reuse_port,
            worker=worker,
            config=args.config,
            log_stream=log_stream,
            keys=keys,
            on_listening=member.listening if member is not None else None,
        )
    except socket.gaierror as exc:  # before OSError, its base: a name that does not resolve
        return _refuse(f"--host {args.host}: cannot resolve it to an address to listen on: {exc.strerror}")
    except OSError as exc:
        if exc.errno not in _BIND_ERRORS:
            raise
        reason = os.strerror(exc.errno) if exc.errno is not None else str(exc)
        return _refuse(f"{port_source}: cannot listen on {args.host}:{port}: {reason} (errno {exc.errno})")
    return 0


def _listen_port(flag: int | None, settings: Settings) -> tuple[int, str]:
    """The port and where it came from: --port, then $PORT, then the default."""
    if flag is not None:
        return flag, f"--port {flag}"
    if settings.process.port is not None:
        return settings.process.port, f"environment variable PORT={settings.process.port}"
    return DEFAULT_PORT, f"default port {DEFAULT_PORT}"


def _refuse(message: str) -> int:
    print(f"sluice: {message}", file=sys.stderr)
    return USAGE_ERROR


def serve(
    settings: Settings,
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    worker: WorkerIdentity | None = None,
    config: Path | None = None,
    log_stream: LossyStream | None = None,
    keys: AuthSettings | None = None,
    on_listening: Callable[[], None] | None = None,
) -> None:
    """Run one gateway process in the foreground (one of several when `worker` is given).

    `config` is the --config file the settings came from, read again on SIGHUP for the gateway keys;
    `log_stream`, the stream `configure_logging` set up, whose lost lines the metrics count; `keys`,
    an `[auth]` whose keys serve instead of the settings' (see create_app); `on_listening`, called
    once the sockets listen.
    """
    log = structlog.get_logger("sluice")
    raise_open_file_limit()  # before the app sizes its connection cap from it
    app = create_app(settings, worker, signals=True, source=SettingsSource(config), log_stream=log_stream, keys=keys)
    app.cleanup_ctx.append(ignore_sighup_once_stopping)  # last: its cleanup comes first

    def announce(_: str) -> None:
        # run_app calls this once its sockets listen. The supervisor's mark goes first: a worker
        # killed right after its line is one that had started, whatever the test or operator saw.
        if on_listening is not None:
            on_listening()
        log.info(
            "sluice_listening",
            url=listening_url(host, port),
            integration="simulated" if settings.simulated else "openai",
            # Each upstream by name and base URL, without user, password or query (never a key).
            upstreams=[{"name": entry.name, "url": loggable_url(entry.base_url)} for entry in upstreams(app)],
            # The configured names ("*": any name; discovery adds the upstream's as it finds them).
            models=list(settings.models.available),
            auth="on" if settings.auth.enabled else "off",
            pid=os.getpid(),
            worker_index=worker.index if worker is not None else None,
        )

    warn_if_open(settings, host)
    warn_if_proxy_ignored(settings)
    # Everything imported and built so far lives as long as the process: moving it out of the
    # collector's sight keeps full collections short. bench/ measured them freezing the loop for
    # 60-500 ms with thousands of live streams, enough to stall streams and overflow the accept queue.
    gc.collect()
    gc.freeze()
    # A finished stream leaves no garbage for the collector (tests/test_stream_endings.py): what
    # triggers its collections is the live set growing as streams open (~180 tracked objects a
    # stream), and they find nothing to free, so each pause is pure delay for every stream. A
    # young pause grows with this threshold, a middle one with it times the middle threshold
    # (gen1's 10): the fewest young collections, short enough that 1,000 streams never reach a
    # middle one, is the choice. bench/ streams-1k (one worker, /v1, pauses by gc.callbacks, two
    # runs each): (20000, 10) 9 young, 55-87 ms in all, longest 9-17 ms; (5000, 10) 36 with 3
    # middle, 125-143 ms, longest 31-35 ms; (50000, 10) 3 young, 70-76 ms, longest 26-28 ms;
    # Python's (700, 10), measured with the per-stream cycle still there: ~250 with 21 middle and
    # a full one, 170-190 ms, longest 33-75 ms.
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    reserve_descriptors(connection_limit(settings.connections))
    web.run_app(
        app,
        host=host,
        port=port,
        loop=_new_event_loop(),
        handler_cancellation=True,
        handle_signals=False,
        access_log=None,
        print=announce,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        # aiohttp arms this at connect and after each response, and closes a connection still
        # waiting for a complete request then: the header-read deadline and the keep-alive idle limit.
        keepalive_timeout=settings.connections.header_timeout,
        backlog=settings.server.backlog,
        reuse_port=reuse_port or None,
        # A worker also listens on its own Unix socket, where the others relay its browser streams.
        path=str(worker.socket_path()) if worker is not None else None,
    )


async def ignore_sighup_once_stopping(app: web.Application) -> AsyncIterator[None]:
    """From the start of the cleanup to the exit, SIGHUP is ignored: its default action would kill the process.

    Left to the key reload's context (server/contexts.py), the loop's SIGHUP handler goes with
    remove_signal_handler, which restores the default: a reload sent to the whole group while a
    worker finishes (or to a single process) would end it by SIGHUP, not with 0. So this context,
    cleaned up first, removes the handler itself (the reload context's removal then finds none and
    leaves the disposition alone) and ignores the signal.
    """
    yield
    # A thread of libuv's resolver pool could still take one as it is set to SIG_IGN if it had
    # SIGHUP open; a worker's pool has it blocked, started while the worker started.
    ignore_from_now({signal.SIGHUP})


def warn_if_open(settings: Settings, host: str) -> None:
    """Say so at start-up when anyone who can reach a non-loopback address may use the upstream key.

    Or, with gateway keys, read what `/metrics` and the dashboard's feed show: the keys' names and
    each key's traffic, to anyone, until `auth.metrics_key_sha256` closes them. Left open on purpose
    (a Prometheus scrape then needs nothing), but said, since the keys suggest the gateway is closed.
    """
    if host in LOOPBACK_HOSTS:
        return
    if not settings.auth.enabled:
        structlog.get_logger("sluice").warning(
            "gateway_open",
            message="No gateway keys are configured and Sluice listens on a non-loopback address: "
            "anyone who reaches it can use the upstream. Configure [[auth.keys]] (see README, Security).",
            host=host,
        )
    elif not settings.auth.metrics_key_sha256:
        structlog.get_logger("sluice").warning(
            "metrics_open",
            message="Gateway keys are configured but no metrics key: anyone who reaches this address can read "
            "GET /metrics and /dashboard/feed (key names, each key's traffic). "
            "Set auth.metrics_key_sha256 (see README, Security).",
            host=host,
        )


# The variables HTTP clients read for a proxy; Sluice's upstream client reads none of them.
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def warn_if_proxy_ignored(settings: Settings, environ: Mapping[str, str] = os.environ) -> None:
    """Say so at start-up when a proxy variable is set and an upstream is not in NO_PROXY: Sluice connects directly.

    Behind a corporate proxy the upstream is then unreachable, and each request's 502
    `upstream_unreachable` would not say why. Names the variables and upstreams, never a value
    (a proxy URL can hold a password).
    """
    if settings.simulated:
        return
    named = [name for name in PROXY_VARIABLES if environ.get(name)]
    if not named:
        return
    no_proxy = environ.get("NO_PROXY") or environ.get("no_proxy") or ""
    direct = [entry.name for entry in settings.upstream_entries() if not _bypasses_proxy(entry.base_url, no_proxy)]
    if direct:
        structlog.get_logger("sluice").warning(
            "upstream_proxy_ignored",
            message="A proxy variable is set, but Sluice connects to its upstreams directly: it reads no "
            "proxy variables. Reach them without the proxy, or list them in NO_PROXY to silence this.",
            variables=named,
            upstreams=direct,
        )


def _bypasses_proxy(url: str, no_proxy: str) -> bool:
    """True when NO_PROXY (curl's reading: `*`, or hosts and domains, a leading dot optional) names `url`'s host."""
    host = (urlsplit(url).hostname or "").lower()
    for entry in no_proxy.split(","):
        domain = entry.strip().lower().lstrip(".")
        if domain == "*" or (domain and (host == domain or host.endswith("." + domain))):
            return True
    return False


def listening_url(host: str, port: int) -> str:
    """The URL Sluice listens on, as a client writes it: an IPv6 address in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # uvloop is optional on platforms without a wheel
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


if __name__ == "__main__":
    sys.exit(main())
