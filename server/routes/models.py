"""GET /models: the original list of models (and aliases) and the default."""

from __future__ import annotations

from aiohttp import web

from ..keys import SETTINGS
from ..middleware.auth import visible_models


async def list_models(request: web.Request) -> web.Response:
    """The models (and aliases) a request may name and the one used when it names none."""
    models = request.app[SETTINGS].models
    return web.json_response({"models": list(visible_models(request)), "default": models.default})
