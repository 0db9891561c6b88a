"""GET /models: the original list of models and the default."""

from __future__ import annotations

from aiohttp import web

from ..keys import SETTINGS
from ..middleware.auth import visible_models


async def list_models(request: web.Request) -> web.Response:
    """The configured models and the one used when a request names none."""
    models = request.app[SETTINGS].models
    return web.json_response({"models": list(visible_models(request)), "default": models.default})
