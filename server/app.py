"""`create_app(settings)`: wire middlewares, state, resources and routes; nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from .keys import BROWSER_STREAMS, CHAT_SCHEMA, LIFECYCLE, METRICS, PEERS, SETTINGS, SIMULATOR_URL, UPSTREAM
from .lifecycle import Lifecycle
from .metrics import Metrics
from .middleware import setup_middlewares
from .openai_schema import ChatCompletionValidator
from .peers import Peers, WorkerIdentity, peers_ctx
from .routes import setup_cors, setup_routes
from .settings import Settings
from .simulator import Pace, create_simulator_app
from .streams.registry import end_streams, streams_ctx
from .streams.settings import BrowserStreamSettings
from .upstreams.attempts import Upstream
from .upstreams.breaker import Breakers, BreakerState, MemoryBreakerStore
from .upstreams.client import UpstreamClient, create_upstream_session
from .upstreams.pool import Pool
from .upstreams.probe import probe_ctx

log = structlog.get_logger("sluice.app")


def create_app(settings: Settings, worker: WorkerIdentity | None = None) -> web.Application:
    """The gateway as an aiohttp application, ready for `web.run_app` or a test client.

    `worker` is set when this process is one of several (`--workers`): browser streams are then
    routed to the worker that owns them (see peers.py).
    """
    app = web.Application(client_max_size=settings.server.max_body_bytes)
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[LIFECYCLE] = Lifecycle(retry_after=settings.server.retry_after, max_live=settings.server.max_live_streams)
    app[CHAT_SCHEMA] = ChatCompletionValidator()
    app[BROWSER_STREAMS] = BrowserStreamSettings(**settings.browser.model_dump())
    setup_middlewares(app)
    if settings.simulated:
        app.cleanup_ctx.append(simulator_ctx)
    app.cleanup_ctx.append(upstream_ctx)
    app.cleanup_ctx.append(probe_ctx)
    # After the upstream: cleanup runs in reverse, so detached browser streams end before it closes.
    app.cleanup_ctx.append(streams_ctx)
    if worker is not None:
        app[PEERS] = Peers(worker)
        app.cleanup_ctx.append(peers_ctx)
    # Before aiohttp waits for open handlers: a browser reading a detached stream gets its end event.
    app.on_shutdown.append(end_streams)
    setup_routes(app)
    setup_cors(app, settings.server.cors_origins)
    return app


async def simulator_ctx(app: web.Application) -> AsyncIterator[None]:
    """With no key configured, serve the simulated model on a loopback port of this process."""
    pace = app[SETTINGS].simulator
    simulator = create_simulator_app(
        Pace(ttft_ms=pace.ttft_ms, gap_ms=pace.gap_ms, tokens=pace.tokens), models=app[SETTINGS].models.available
    )
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
    """One pooled session for every upstream, and the routing between them, for the app's lifetime."""
    settings = app[SETTINGS]
    session = create_upstream_session(settings.upstream)
    entries = settings.upstream_entries(app.get(SIMULATOR_URL))
    clients = [UpstreamClient(entry, session, settings.upstream) for entry in entries]
    metrics = app[METRICS]
    levels = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}

    def on_change(name: str, state: BreakerState) -> None:
        metrics.breaker_state.labels(name).set(levels[state])
        log.warning("upstream_breaker_changed", upstream=name, state=str(state))

    for client in clients:
        metrics.breaker_state.labels(client.name).set(0)
    routing = settings.routing
    breakers = Breakers(
        MemoryBreakerStore(),
        failures=routing.breaker_failures,
        cooldown=routing.breaker_cooldown_seconds,
        on_rate_limit=routing.breaker_on_rate_limit,
        on_change=on_change,
    )
    app[UPSTREAM] = Upstream(Pool(clients), breakers, routing, metrics)
    yield
    await session.close()
