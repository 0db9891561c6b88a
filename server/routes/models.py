"""GET /models: the original list of models (and aliases) and the default."""

from __future__ import annotations

from aiohttp import web

from ..middleware.auth import default_model, visible_models


async def list_models(request: web.Request) -> web.Response:
    """The models (and aliases) a request may name and the one used when it names none (for its key)."""
    return web.json_response({"models": list(visible_models(request)), "default": default_model(request)})
