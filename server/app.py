"""The composition root: `create_app(settings)` builds every component and wires it; nothing else does.

A request goes: middleware (request id, access log, errors, connection cap, auth, body) -> route
handler (routes/) -> chat_call.py or streams/ -> upstreams/ (routing, retries, breakers) -> relay.py
-> SSE response.
Domain modules never read the application's keys: only this module, contexts.py, routes/,
middleware/ and chat_call.py do.
"""

from __future__ import annotations

from aiohttp import web

from .auth.gateway_keys import KeyRing
from .auth.limits import MemoryLimitStore
from .auth.tokens import TokenSigner, token_secret
from .catalog import ModelCatalog
from .connections import connection_limit
from .contexts import (
    discovery_ctx,
    dropped_log_lines_ctx,
    end_streams,
    key_reload_ctx,
    probe_ctx,
    redis_ctx,
    signals_ctx,
    simulator_ctx,
    streams_ctx,
    upstream_ctx,
    worker_proxy_ctx,
)
from .credentials import UpstreamCredentials
from .http_protocol import serve_with_gateway_protocol
from .keys import (
    CHAT_SCHEMA,
    CONNECTION_LIMIT,
    KEYRING,
    LIFECYCLE,
    LIMITS,
    LOG_STREAM,
    METRICS,
    MODELS,
    SETTINGS,
    SETTINGS_SOURCE,
    SIMULATOR_URL,
    TIMERS,
    TOKENS,
    UPSTREAM_CREDENTIALS,
    WORKER_PROXY,
)
from .lifecycle import Lifecycle
from .logs import LossyStream
from .metrics import Metrics
from .middleware import setup_middlewares
from .openai_schema import ChatCompletionValidator
from .routes import dashboard, setup_cors, setup_routes
from .settings import AuthSettings, Settings, SettingsSource, UpstreamEntry
from .timers import Timers
from .worker_proxy import WorkerIdentity, WorkerProxy


def create_app(
    settings: Settings,
    worker: WorkerIdentity | None = None,
    *,
    signals: bool = False,
    source: SettingsSource | None = None,
    log_stream: LossyStream | None = None,
    keys: AuthSettings | None = None,
) -> web.Application:
    """The gateway as an aiohttp application, ready for `web.run_app` or a test client.

    `worker` is set when this process is one of several (`--workers`): browser streams are then
    forwarded to the worker that owns them (see worker_proxy.py). `signals` (run.py) drains the
    process on SIGTERM/SIGINT and, given the settings' `source`, reloads the gateway keys from it on
    SIGHUP; tests' in-process apps leave the signals alone. `log_stream` (run.py) is the log's
    stream, whose lines lost are counted in the metrics. `keys`, when given, is an `[auth]` section
    whose gateway keys and metrics key serve instead of the settings' (a --workers replacement takes
    those of the group's last SIGHUP, see workers.py), as a SIGHUP reload would take them.
    """
    app = web.Application(client_max_size=settings.server.max_body_bytes)
    # Plain state, built now: no I/O, nothing to close.
    app[SETTINGS] = settings
    app[MODELS] = ModelCatalog(settings.models)
    app[METRICS] = Metrics(settings.process.metrics_dir, app[MODELS], settings.routing)
    app[LIFECYCLE] = Lifecycle(
        retry_after=settings.server.retry_after,
        max_live=settings.server.max_live_streams,
        live_gauge=app[METRICS].live_streams,
    )
    app[TIMERS] = Timers()
    app[CHAT_SCHEMA] = ChatCompletionValidator()
    app[UPSTREAM_CREDENTIALS] = UpstreamCredentials()
    if worker is not None:
        app[WORKER_PROXY] = WorkerProxy(worker)
    setup_auth(app, settings, keys)
    setup_middlewares(app)

    # Resources, opened in this order on startup and closed in reverse on cleanup. Order matters:
    # the upstream needs the simulator's URL; the streams need the upstream and must end before it
    # closes. The signal handlers come last, so they are removed first and a signal's drain runs
    # while everything is still open.
    if log_stream is not None:
        app[LOG_STREAM] = log_stream
        app.cleanup_ctx.append(dropped_log_lines_ctx)  # 0. log lines lost, counted from the start to the end
    if settings.simulated:
        app.cleanup_ctx.append(simulator_ctx)  # 1. built-in simulated model (no key configured)
    app.cleanup_ctx.append(redis_ctx)  # 2. the link to Redis, when configured (breakers and streams use it)
    app.cleanup_ctx.append(upstream_ctx)  # 3. pooled upstream session and the routing
    app.cleanup_ctx.append(probe_ctx)  # 3b. background probe of upstreams whose breaker is open
    app.cleanup_ctx.append(discovery_ctx)  # 3c. the upstreams' model lists, when models.discover is on
    app.cleanup_ctx.append(streams_ctx)  # 4. detached streams: store and registry
    app.cleanup_ctx.append(dashboard.feeds_ctx)  # 4b. the dashboard feeds' one producer of snapshots
    if worker is not None:
        app.cleanup_ctx.append(worker_proxy_ctx)  # 5. sessions to the other workers
    if signals and source is not None:
        app[SETTINGS_SOURCE] = source
        app.cleanup_ctx.append(key_reload_ctx)  # 6. SIGHUP: reload the gateway keys
    if signals:
        app.cleanup_ctx.append(signals_ctx)  # 7. SIGTERM/SIGINT: drain, then exit
    # Before aiohttp waits for open handlers: a browser reading a detached stream gets its end event.
    app.on_shutdown.append(end_streams)

    setup_routes(app)
    setup_cors(app, settings.server.cors_origins, keys_configured=settings.auth.enabled)
    serve_with_gateway_protocol(app, settings.stream.send_timeout)  # broken HTTP gets the JSON envelope too
    return app


def setup_auth(app: web.Application, settings: Settings, keys: AuthSettings | None = None) -> None:
    """Gateway keys (`keys`' if given), their limits (counted in this process), browser tokens, the connection cap."""
    app[KEYRING] = KeyRing.from_settings(keys or settings.auth)
    app[LIMITS] = MemoryLimitStore()
    app[TOKENS] = TokenSigner(token_secret(settings.auth), settings.auth.token_ttl_seconds)
    app[CONNECTION_LIMIT] = connection_limit(settings.connections)


def upstreams(app: web.Application) -> tuple[UpstreamEntry, ...]:
    """The upstreams `app` relays to: [[upstreams]], else [upstream] (the built-in simulator once it started)."""
    return app[SETTINGS].upstream_entries(app.get(SIMULATOR_URL))
