"""Read the upstream's model list (`GET {base_url}/models`) at start and refresh it in the background.

On only with `models.discover` (contexts.py starts and closes it). The list read is handed to the
ModelCatalog; a failed read is logged and the last list kept, so an upstream that is briefly away
never empties the catalog. Discovery has a small session of its own: one request every few
minutes, outside the chat path and its accounting.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import structlog

from .catalog import ModelCatalog
from .settings import UpstreamSettings

log = structlog.get_logger("sluice.discovery")

# Most model entries taken from one answer: a bound on what an upstream can make Sluice hold.
MAX_MODELS = 10_000


class ModelDiscovery:
    """Keeps `catalog` up to date with the upstream's model list."""

    def __init__(self, catalog: ModelCatalog, base_url: str, upstream: UpstreamSettings, interval: float) -> None:
        self._catalog = catalog
        self._url = base_url.rstrip("/") + "/models"
        key = upstream.api_key
        self._headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key is not None else {}
        connect = upstream.connect_timeout
        self._timeout = aiohttp.ClientTimeout(total=connect * 2, sock_connect=connect)
        self._interval = interval
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Read the list once, then keep refreshing it in a background task."""
        self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        await self.refresh()
        self._task = asyncio.create_task(self._refresh_forever())

    async def close(self) -> None:
        """Stop refreshing and close the session."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    async def refresh(self) -> None:
        """Read the list now; keep the last one if the read fails."""
        assert self._session is not None
        models = await read_models(self._session, self._url)
        if models is not None:
            self._catalog.update(models)
            log.info("models_discovered", count=len(models))

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.refresh()


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
