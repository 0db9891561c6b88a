"""GET /metrics in Prometheus' text exposition format."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from ..keys import METRICS


async def metrics(request: web.Request) -> web.Response:
    """Every metric of this process, or of all workers when they share a metrics directory."""
    response = web.Response(body=request.app[METRICS].exposition())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
