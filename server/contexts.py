"""The resources of the application, each opened and closed by one `cleanup_ctx` (see app.py for the order).

Domain modules know nothing of aiohttp's application or its keys: this module reads the keys,
builds each component from the ones it depends on, and closes it at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from .auth.reload import reload_keys
from .discovery import ModelDiscovery
from .keys import (
    KEYRING,
    LIFECYCLE,
    LIMITS,
    LOG_STREAM,
    METRICS,
    MODELS,
    REDIS,
    SETTINGS,
    SETTINGS_SOURCE,
    SIMULATOR_URL,
    STREAMS,
    TIMERS,
    UPSTREAM,
    WORKER_PROXY,
)
from .settings import BrowserSettings
from .shared.breakers import RedisBreakerStore
from .shared.limit_store import RedisLimitStore
from .shared.link import RedisLink
from .simulator import Pace, create_simulator_app
from .streams.generation import Services
from .streams.memory import MemoryStreamStore
from .streams.redis_store import RedisStreamStore
from .streams.registry import READ_SLACK, StreamRegistry
from .streams.store import StreamStore
from .upstreams.attempts import Upstream
from .upstreams.breaker import Breakers, BreakerState, MemoryBreakerStore
from .upstreams.client import UpstreamClient, create_upstream_connections
from .upstreams.pool import Pool
from .upstreams.probe import Prober

log = structlog.get_logger("sluice.app")
# The drain's lines keep the logger they always had, so dashboards and greps still find them.
drain_log = structlog.get_logger("sluice.lifecycle")


async def dropped_log_lines_ctx(app: web.Application) -> AsyncIterator[None]:
    """Count the log lines stdout refused in `sluice_log_lines_dropped_total`, those before start-up too."""
    output, dropped = app[LOG_STREAM], app[METRICS].log_lines_dropped
    dropped.inc(output.dropped)
    output.on_drop = dropped.inc
    yield
    output.on_drop = None


async def simulator_ctx(app: web.Application) -> AsyncIterator[None]:
    """With no key configured, serve the simulated model on a loopback port of this process."""
    pace = app[SETTINGS].simulator
    # No /_sim control routes here: they are for tests and bench, which start their own simulator.
    models = app[MODELS].served() or [app[MODELS].default]
    simulator = create_simulator_app(Pace(ttft_ms=pace.ttft_ms, gap_ms=pace.gap_ms, tokens=pace.tokens), models=models)
    runner = web.AppRunner(simulator, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    app[SIMULATOR_URL] = f"http://127.0.0.1:{port}/v1"
    log.warning(
        "simulated_upstream_started",
        message="No upstream key is set (AI_INTEGRATIONS_OPENAI_API_KEY): "
        "replies come from the built-in simulated model.",
        url=app[SIMULATOR_URL],
    )
    yield
    await runner.cleanup()


async def upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    """The connection pools of every upstream, and the routing between them, for the app's lifetime."""
    settings = app[SETTINGS]
    connections = create_upstream_connections(settings.upstream)
    entries = settings.upstream_entries(app.get(SIMULATOR_URL))
    caps = settings.connections
    clients = [
        UpstreamClient(
            entry,
            connections,
            settings.upstream,
            max_event_bytes=caps.max_upstream_event_bytes,
            max_reply_bytes=caps.max_upstream_reply_bytes,
        )
        for entry in entries
    ]
    metrics = app[METRICS]
    levels = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}

    def on_change(name: str, state: BreakerState) -> None:
        metrics.breaker_state.labels(name).set(levels[state])
        log.warning("upstream_breaker_changed", upstream=name, state=str(state))

    for client in clients:
        metrics.breaker_state.labels(client.name).set(0)
    routing = settings.routing
    link = app.get(REDIS)  # redis_ctx runs first: with Redis, every instance shares the breakers
    breakers = Breakers(
        RedisBreakerStore(link) if link is not None else MemoryBreakerStore(),
        failures=routing.breaker_failures,
        cooldown=routing.breaker_cooldown_seconds,
        on_rate_limit=routing.breaker_on_rate_limit,
        on_change=on_change,
    )
    app[UPSTREAM] = Upstream(Pool(clients), breakers, routing, metrics)
    yield
    await connections.close()


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    """The link to Redis, when `[redis] url` is set: browser streams and breakers are shared there."""
    settings = app[SETTINGS].redis
    if settings.url is None:
        yield
        return
    link = RedisLink(settings, on_change=app[METRICS].redis_reachability())
    link.start()
    app[REDIS] = link
    # Per-key limits count across every instance too.
    limits = RedisLimitStore(link, retry_after=app[SETTINGS].server.retry_after)
    app[LIMITS] = limits
    yield
    await limits.close()
    await link.close()


def open_store(app: web.Application, bounds: BrowserSettings) -> StreamStore:
    """Redis Streams when Redis is configured (redis_ctx ran first), else this process's memory."""
    link = app.get(REDIS)
    # Unread events fill up to the budget plus one upstream read (under READ_SLACK) before the
    # upstream is held back; as much again of read ones stays for resuming.
    max_bytes = 2 * bounds.max_buffered_bytes + READ_SLACK
    if link is None:
        return MemoryStreamStore(
            max_events=bounds.max_buffered_events,
            max_streams=bounds.max_streams,
            retention=bounds.retention_seconds,
            max_bytes=max_bytes,
            max_kept_bytes=bounds.max_kept_bytes,
        )
    store = RedisStreamStore(link, bounds, max_bytes=max_bytes)
    store.start()
    return store


async def probe_ctx(app: web.Application) -> AsyncIterator[None]:
    """Probe each upstream as its breaker half-opens, at most every `upstream.probe_interval` seconds."""
    task = asyncio.create_task(Prober(app[UPSTREAM], app[SETTINGS].upstream.probe_interval).run())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def discovery_ctx(app: web.Application) -> AsyncIterator[None]:
    """With `models.discover`, read the upstream's model list before serving, then every interval."""
    settings = app[SETTINGS]
    if not settings.models.discover:
        yield
        return
    entries = settings.upstream_entries(app.get(SIMULATOR_URL))
    discovery = ModelDiscovery(
        app[MODELS], entries, settings.upstream.connect_timeout, settings.models.discover_interval
    )
    await discovery.start()
    yield
    await discovery.close()


async def streams_ctx(app: web.Application) -> AsyncIterator[None]:
    """The detached streams' store and registry; closing ends every generation, then the store."""
    bounds = app[SETTINGS].browser
    store = open_store(app, bounds)
    services = Services(
        upstream=app[UPSTREAM],
        store=store,
        lifecycle=app[LIFECYCLE],
        metrics=app[METRICS],
        settings=app[SETTINGS],
        timers=app[TIMERS],
    )
    proxy = app.get(WORKER_PROXY)
    registry = StreamRegistry(services, bounds, proxy.identity.stream_id_prefix() if proxy is not None else "")
    app[STREAMS] = registry
    yield
    await registry.close()


async def worker_proxy_ctx(app: web.Application) -> AsyncIterator[None]:
    """The sessions to the other workers (`--workers`), closed with the application."""
    yield
    await app[WORKER_PROXY].close()


async def end_streams(app: web.Application) -> None:
    """on_shutdown: end the generations before aiohttp waits for handlers, so their readers finish.

    After a drain (run.py) none is left; this covers every other way an application stops.
    """
    app[STREAMS].end_all()


def _raise_graceful_exit() -> None:
    # GracefulExit is a SystemExit: raised from a loop callback it leaves run_until_complete,
    # and web.run_app then runs the normal cleanup and returns, so the process exits 0.
    raise web.GracefulExit()


def ignore_from_now(signums: set[signal.Signals]) -> None:
    """Remove the loop's handlers for `signums` and ignore them until the process exits.

    `remove_signal_handler` restores each default: SIGTERM's and SIGHUP's kill the process, and
    SIGINT's raises KeyboardInterrupt wherever Python runs. Sent while the process finishes its
    cleanup after a drain (an orchestrator's second SIGTERM, a third Ctrl-C), either would end it
    by signal or with a traceback, its last log lines lost. SIGKILL still ends a cleanup that hangs.
    Blocked in this thread from each default's return to SIG_IGN, which discards one sent between.
    """
    held = signal.pthread_sigmask(signal.SIG_BLOCK, signums)
    try:
        loop = asyncio.get_running_loop()
        for signum in signums:
            loop.remove_signal_handler(signum)
            signal.signal(signum, signal.SIG_IGN)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


async def signals_ctx(app: web.Application) -> AsyncIterator[None]:
    """Drain on SIGTERM and SIGINT, then exit; only for `create_app(..., signals=True)` (run.py)."""
    loop = asyncio.get_running_loop()
    lifecycle = app[LIFECYCLE]
    drain_timeout = app[SETTINGS].server.drain_timeout
    tasks: list[asyncio.Task[None]] = []

    async def drain_then_exit() -> None:
        await lifecycle.drain(drain_timeout)
        loop.call_soon(_raise_graceful_exit)

    def on_signal(signum: int) -> None:
        if tasks:
            drain_log.info("drain_hurried", signal=signal.Signals(signum).name)
            lifecycle.end_all()
            return
        drain_log.info("signal_received", signal=signal.Signals(signum).name)
        tasks.append(loop.create_task(drain_then_exit()))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    yield
    ignore_from_now({signal.SIGTERM, signal.SIGINT})
    for task in tasks:
        if not task.done():
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def key_reload_ctx(app: web.Application) -> AsyncIterator[None]:
    """Reload the gateway keys from the configuration on SIGHUP (server/auth/reload.py)."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, reload_keys, app[KEYRING], app[SETTINGS_SOURCE], app[SETTINGS])
    yield
    loop.remove_signal_handler(signal.SIGHUP)
