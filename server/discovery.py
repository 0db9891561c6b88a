"""Read the upstreams' model lists (`GET {base_url}/models`) at start and refresh them in the background.

On only with `models.discover` (contexts.py starts and closes it). The union of the lists read is
handed to the ModelCatalog; a failed read is logged and the last list kept, so an upstream that is
briefly away never empties the catalog. Discovery has a small session of its own: one request every few
minutes, outside the chat path and its accounting.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import structlog

from .catalog import ModelCatalog
from .settings import UpstreamEntry

log = structlog.get_logger("sluice.discovery")

# Most model entries taken from one answer: a bound on what an upstream can make Sluice hold.
MAX_MODELS = 10_000


class ModelDiscovery:
    """Keeps `catalog` up to date with the model lists of the upstreams."""

    def __init__(
        self, catalog: ModelCatalog, upstreams: Sequence[UpstreamEntry], connect_timeout: float, interval: float
    ) -> None:
        self._catalog = catalog
        self._sources = [(models_url(entry.base_url), _auth(entry)) for entry in upstreams]
        self._timeout = aiohttp.ClientTimeout(total=connect_timeout * 2, sock_connect=connect_timeout)
        self._interval = interval
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Read the lists once, then keep refreshing them in a background task."""
        self._session = aiohttp.ClientSession(timeout=self._timeout)
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
        """Read every upstream's list now and take their union; keep the last one if every read fails."""
        assert self._session is not None
        session = self._session
        answers = await asyncio.gather(*(read_models(session, url, headers) for url, headers in self._sources))
        lists = [models for models in answers if models is not None]
        if lists:
            models = [model for found in lists for model in found]
            self._catalog.update(models)
            log.info("models_discovered", count=len(self._catalog.discovered))

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.refresh()


def models_url(base_url: str) -> str:
    """`{base_url}/models`, with the base URL's query (Azure's `api-version`) after the path, not inside it."""
    parts = urlsplit(base_url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + "/models", parts.query, ""))


def _auth(entry: UpstreamEntry) -> dict[str, str]:
    key = entry.key_header()
    return dict([key]) if key is not None else {}


async def read_models(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> list[str] | None:
    """The ids in an OpenAI-style model list, or None (logged) when it could not be read."""
    try:
        async with session.get(url, headers=headers) as response:
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
