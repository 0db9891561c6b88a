"""Start Sluice: `python run.py [--host H] [--port P] [--config PATH] [--workers N]`."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
from pathlib import Path

import structlog
from aiohttp import web

from server.app import create_app
from server.logs import configure_logging
from server.settings import Settings, SettingsError, load_settings
from server.worker_proxy import WorkerIdentity, identity_from_args

# Seconds aiohttp waits for handlers after the drain; the drain has ended every stream already.
SHUTDOWN_TIMEOUT = 5.0
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; see `python run.py --help`."""
    parser = argparse.ArgumentParser(
        prog="run.py",
        description="Sluice: a streaming gateway for OpenAI-compatible chat models.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("PORT", "8080")),
        help="port to listen on (default: $PORT, else 8080)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML file overlaid on config/default.toml (default: none)",
    )
    parser.add_argument(
        "--workers",
        type=int,
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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Load settings, then serve until SIGTERM or SIGINT has drained the process."""
    args = parse_args(argv)
    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return 2
    configure_logging(args.log_format or settings.logging.format, settings.logging.level)
    if args.workers > 1:
        from server.workers import supervise

        return supervise(args.workers, sys.argv[1:])
    # With Redis every worker reads every stream from there: no relay between workers is needed.
    worker = identity_from_args(args.worker_index, args.peer_dir) if settings.redis.url is None else None
    serve(settings, args.host, args.port, reuse_port=args.reuse_port, worker=worker)
    return 0


def serve(
    settings: Settings, host: str, port: int, *, reuse_port: bool = False, worker: WorkerIdentity | None = None
) -> None:
    """Run one gateway process in the foreground (one of several when `worker` is given)."""
    log = structlog.get_logger("sluice")
    app = create_app(settings, worker, signals=True)

    def announce(_: str) -> None:
        # run_app calls this once its sockets listen: the line tests and operators wait for.
        log.info(
            "sluice_listening",
            url=f"http://{host}:{port}",
            integration="simulated" if settings.simulated else "openai",
            pid=os.getpid(),
        )

    warn_if_open(settings, host)
    # Everything imported and built so far lives as long as the process: moving it out of the
    # collector's sight keeps full collections short. bench/ measured them freezing the loop for
    # 60-500 ms with thousands of live streams, enough to stall streams and overflow the accept queue.
    gc.collect()
    gc.freeze()
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


def warn_if_open(settings: Settings, host: str) -> None:
    """Say so at start-up when anyone who can reach a non-loopback address may use the upstream key."""
    if settings.auth.enabled or host in LOOPBACK_HOSTS:
        return
    structlog.get_logger("sluice").warning(
        "gateway_open",
        message="No gateway keys are configured and Sluice listens on a non-loopback address: "
        "anyone who reaches it can use the upstream. Configure [[auth.keys]] (see README, Security).",
        host=host,
    )


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # uvloop is optional on platforms without a wheel
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


if __name__ == "__main__":
    sys.exit(main())
