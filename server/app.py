"""`create_app(settings)`: wire middlewares, state, resources and routes; nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from .catalog import ModelCatalog
from .discovery import discovery_ctx
from .keys import BROWSER_STREAMS, CHAT_SCHEMA, LIFECYCLE, METRICS, MODELS, PEERS, SETTINGS, SIMULATOR_URL, UPSTREAM
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
from .upstream import Upstream, create_sdk_client, create_upstream_session

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
    app[MODELS] = ModelCatalog(settings.models)
    setup_middlewares(app)
    if settings.simulated:
        app.cleanup_ctx.append(simulator_ctx)
    app.cleanup_ctx.append(upstream_ctx)
    app.cleanup_ctx.append(discovery_ctx)
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
    """One pooled upstream session and SDK client for the application's lifetime."""
    settings = app[SETTINGS].upstream
    base_url = app.get(SIMULATOR_URL) or settings.base_url
    session = create_upstream_session(settings)
    client = create_sdk_client(session, settings, base_url)
    app[UPSTREAM] = Upstream(client, session, settings)
    yield
    await client.close()
    await session.close()
