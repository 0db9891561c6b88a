"""The HTTP surface: every route, added in one place, then wrapped for CORS."""

from __future__ import annotations

from aiohttp import web

from ..cors import CorsPolicy
from . import browser, chat, dashboard, health, metrics, models, openai, page
from .cors import setup_cors_policy


def setup_routes(app: web.Application) -> None:
    """Add every route of the gateway."""
    app.router.add_get("/health", health.health)
    app.router.add_get("/livez", health.livez)
    app.router.add_get("/readyz", health.readyz)
    app.router.add_get("/metrics", metrics.metrics)
    app.router.add_get("/dashboard", dashboard.dashboard_page)
    app.router.add_get("/dashboard/feed", dashboard.dashboard_feed, allow_head=False)
    app.router.add_get("/models", models.list_models)
    app.router.add_post("/chat", chat.chat)
    app.router.add_post("/chat/stream", chat.chat_stream)
    app.router.add_get("/v1/models", openai.list_models)
    # Ids such as "Qwen/Qwen2.5-7B" hold a slash, which not every client percent-encodes.
    app.router.add_get("/v1/models/{model_id:.+}", openai.get_model)
    app.router.add_post("/v1/chat/completions", openai.chat_completions)
    app.router.add_get("/", page.index)
    app.router.add_get("/static/{name}", page.static_file)
    app.router.add_post("/chat/streams", browser.create_stream)
    # HEAD on a stream answers what its GET would, without reading it (browser.read_stream); none on
    # the one-step GET, where a HEAD must not start a generation.
    app.router.add_get("/chat/streams/{stream_id}", browser.read_stream, name="chat_stream_events")
    app.router.add_delete("/chat/streams/{stream_id}", browser.delete_stream)
    app.router.add_get("/chat/stream", browser.chat_stream_get, name="chat_stream_get", allow_head=False)
    app.router.add_post("/chat/stream/token", browser.create_one_step_token)


def setup_cors(app: web.Application, origins: tuple[str, ...], *, keys_configured: bool = False) -> None:
    """Answer preflights and mark cross-origin responses for the configured origins (see server/cors.py)."""
    setup_cors_policy(app, CorsPolicy.from_settings(origins, keys_configured=keys_configured))
