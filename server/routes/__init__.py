"""The HTTP surface: every route, added in one place, then wrapped for CORS."""

from __future__ import annotations

from functools import partial

from aiohttp import web

from ..cors import CorsPolicy
from ..middleware.body import defer_expectation
from . import browser, chat, dashboard, health, metrics, models, openai, page
from .cors import setup_cors_policy


def setup_routes(app: web.Application) -> None:
    """Add every route of the gateway; `Expect` is the chain's to answer (middleware/body.py)."""
    get = partial(app.router.add_get, expect_handler=defer_expectation)
    post = partial(app.router.add_post, expect_handler=defer_expectation)
    delete = partial(app.router.add_delete, expect_handler=defer_expectation)
    get("/health", health.health)
    get("/livez", health.livez)
    get("/readyz", health.readyz)
    get("/metrics", metrics.metrics)
    get("/dashboard", dashboard.dashboard_page)
    get("/dashboard/feed", dashboard.dashboard_feed, allow_head=False)
    get("/models", models.list_models)
    post("/chat", chat.chat)
    post("/chat/stream", chat.chat_stream)
    get("/v1/models", openai.list_models)
    # Ids such as "Qwen/Qwen2.5-7B" hold a slash, which not every client percent-encodes.
    get("/v1/models/{model_id:.+}", openai.get_model)
    post("/v1/chat/completions", openai.chat_completions)
    get("/", page.index)
    get("/static/{name}", page.static_file)
    post("/chat/streams", browser.create_stream)
    # HEAD on a stream answers what its GET would, without reading it (browser.read_stream); none on
    # the one-step GET, where a HEAD must not start a generation.
    get("/chat/streams/{stream_id}", browser.read_stream, name="chat_stream_events")
    delete("/chat/streams/{stream_id}", browser.delete_stream)
    get("/chat/stream", browser.chat_stream_get, name="chat_stream_get", allow_head=False)
    post("/chat/stream/token", browser.create_one_step_token)


def setup_cors(app: web.Application, origins: tuple[str, ...], *, keys_configured: bool = False) -> None:
    """Answer preflights and mark cross-origin responses for the configured origins (see server/cors.py)."""
    setup_cors_policy(app, CorsPolicy.from_settings(origins, keys_configured=keys_configured))
