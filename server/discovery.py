"""Read the upstream's model list (`GET {base_url}/models`) at start and refresh it in the background.

On only with `models.discover`. The list read is handed to the ModelCatalog; a failed read is
logged and the last list kept, so an upstream that is briefly away never empties the catalog.
Discovery has a small session of its own: it is one request every few minutes, outside the
chat path and its accounting.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import structlog
from aiohttp import web

from .keys import MODELS, SETTINGS, SIMULATOR_URL

log = structlog.get_logger("sluice.discovery")

# Most model entries taken from one answer: a bound on what an upstream can make Sluice hold.
MAX_MODELS = 10_000


async def discovery_ctx(app: web.Application) -> AsyncIterator[None]:
    """With `models.discover`, read the model list once before serving, then every interval."""
    settings = app[SETTINGS]
    if not settings.models.discover:
        yield
        return
    base_url = app.get(SIMULATOR_URL) or settings.upstream.base_url
    key = settings.upstream.api_key
    headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key is not None else {}
    connect = settings.upstream.connect_timeout
    timeout = aiohttp.ClientTimeout(total=connect * 2, sock_connect=connect)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        url = base_url.rstrip("/") + "/models"
        catalog = app[MODELS]

        async def refresh() -> None:
            models = await read_models(session, url)
            if models is not None:
                catalog.update(models)
                log.info("models_discovered", count=len(models))

        async def refresh_forever() -> None:
            while True:
                await asyncio.sleep(settings.models.discover_interval)
                await refresh()

        await refresh()
        task = asyncio.create_task(refresh_forever())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def read_models(session: aiohttp.ClientSession, url: str) -> list[str] | None:
    """The ids in an OpenAI-style model list, or None (logged) when it could not be read."""
    try:
        async with session.get(url) as response:
            if response.status != 200:
                log.warning("models_discovery_failed", status=response.status)
                return None
            body = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        log.warning("models_discovery_failed", error=type(exc).__name__)
        return None
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        log.warning("models_discovery_failed", error="no data list")
        return None
    return [entry["id"] for entry in data[:MAX_MODELS] if isinstance(entry, dict) and isinstance(entry.get("id"), str)]
