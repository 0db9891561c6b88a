"""GET /models: the original list of models (and aliases) and the default."""

from __future__ import annotations

from aiohttp import web

from ..keys import MODELS


async def list_models(request: web.Request) -> web.Response:
    """The models a request may name and the one used when it names none."""
    catalog = request.app[MODELS]
    return web.json_response({"models": catalog.names(), "default": catalog.default})
