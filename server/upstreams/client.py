"""Talk to one configured upstream: open a stream, complete a chat, probe it; map its failures.

Requests go out on the shared pooled session directly (no SDK): bench/ measured the SDK's request
path at about 1 ms of CPU per call, and the relay forwards each chunk's bytes as they arrived.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import structlog

from ..chunks import MAX_EVENT_BYTES
from ..errors import UpstreamError, UpstreamProtocolError
from ..logs import connection_error_fields
from ..settings import UpstreamEntry, UpstreamSettings
from .failures import connect_failure, status_failure, timeout_failure
from .stream import UpstreamStream

log = structlog.get_logger("sluice.upstream")

# aiohttp stops reading the upstream once twice this is buffered: with a client that stopped
# reading, that buffer is what the stream holds (bench: 256 KiB here held ~1.4 MB of RSS per
# stalled reader). An event larger than this still arrives whole: readany() returns what is
# buffered and EventSplitter joins the pieces.
READ_BUFFER_BYTES = 1 << 14
ERROR_BODY_LIMIT = 64 * 1024
MAX_REPLY_BYTES = 16 << 20


class UpstreamClient:
    """One upstream of the configuration, with the count of requests in flight to it."""

    def __init__(
        self,
        entry: UpstreamEntry,
        session: aiohttp.ClientSession,
        settings: UpstreamSettings,
        *,
        max_event_bytes: int = MAX_EVENT_BYTES,
        max_reply_bytes: int = MAX_REPLY_BYTES,
    ) -> None:
        self.entry = entry
        self._max_event_bytes = max_event_bytes
        self._max_reply_bytes = max_reply_bytes
        self.name = entry.name
        self.in_flight = 0
        self._session = session
        self._settings = settings
        base = entry.base_url.rstrip("/")
        self._url = base + "/chat/completions"
        self._models_url = base + "/models"
        self._headers = {"Content-Type": "application/json", "User-Agent": "sluice"}
        if entry.api_key is not None:
            self._headers["Authorization"] = "Bearer " + entry.api_key.get_secret_value()
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout)

    @property
    def full(self) -> bool:
        """True when `max_concurrency` requests are in flight."""
        cap = self.entry.max_concurrency
        return cap > 0 and self.in_flight >= cap

    async def open_stream(
        self, body: dict[str, Any], request_id: str, on_accepted: Callable[[], None] | None = None
    ) -> UpstreamStream:
        """Send a streaming request; return once its first token arrived, else raise UpstreamError.

        `on_accepted` is called when the upstream answered 200, before its first token.
        """
        self.in_flight += 1
        try:
            async with asyncio.timeout(self._settings.header_timeout):
                response = await self._send(body, request_id, accept="text/event-stream")
        except TimeoutError:
            self._done()
            raise timeout_failure("header_timeout", "The upstream sent no response headers in time.") from None
        except BaseException:
            self._done()
            raise
        stream = UpstreamStream(response, self.name, on_close=self._done, max_event_bytes=self._max_event_bytes)
        if on_accepted is not None:
            on_accepted()
        try:
            async with asyncio.timeout(self._settings.first_token_timeout):
                await stream.prime()
        except TimeoutError:
            stream.close()
            raise timeout_failure("first_token_timeout", "The upstream sent no token in time.") from None
        except BaseException:
            stream.close()
            raise
        return stream

    async def complete(self, body: dict[str, Any], request_id: str) -> bytes:
        """Send a non-streaming request; return the upstream's JSON body as received."""
        self.in_flight += 1
        try:
            response = await self._send(body, request_id, accept="application/json")
            try:
                return await _read_bounded(response, self._max_reply_bytes)
            except aiohttp.ClientError as exc:
                log.warning("upstream_body_failed", upstream=self.name, error=type(exc).__name__)
                raise connect_failure() from exc
            finally:
                response.release()
        finally:
            self._done()

    async def probe(self) -> bool:
        """True when GET <base_url>/models answers as a live upstream with valid credentials does."""
        timeout = aiohttp.ClientTimeout(total=self._settings.connect_timeout * 2)
        try:
            async with self._session.get(self._models_url, headers=self._headers, timeout=timeout) as response:
                await response.read()
                return response.status < 500 and response.status not in (401, 403, 429)
        except (aiohttp.ClientError, TimeoutError):
            return False

    def _done(self) -> None:
        self.in_flight -= 1

    async def _send(self, body: dict[str, Any], request_id: str, *, accept: str) -> aiohttp.ClientResponse:
        """POST the chat request; return the response once it answered 200, else raise UpstreamError."""
        headers = {**self._headers, "Accept": accept, "X-Request-ID": request_id}
        try:
            response = await self._session.post(
                self._url, data=orjson.dumps(body), headers=headers, timeout=self._timeout
            )
        except (aiohttp.ServerTimeoutError, aiohttp.ConnectionTimeoutError) as exc:
            log.warning("upstream_connect_failed", upstream=self.name, **connection_error_fields(exc))
            raise timeout_failure() from exc
        except aiohttp.ClientError as exc:
            log.warning("upstream_connect_failed", upstream=self.name, **connection_error_fields(exc))
            raise connect_failure() from exc
        if response.status != 200:
            raise await self._status_error(response)
        return response

    async def _status_error(self, response: aiohttp.ClientResponse) -> UpstreamError:
        """Read a bounded error body and map it through the failure table."""
        try:
            content = await asyncio.wait_for(
                _read_up_to(response.content, ERROR_BODY_LIMIT), self._settings.connect_timeout
            )
        except (aiohttp.ClientError, TimeoutError):
            content = b""
        finally:
            response.close()
        return status_failure(response.status, response.headers, content)


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, decompressed, or UpstreamProtocolError once it passes `limit` bytes."""
    parts: list[bytes] = []
    size = 0
    async for piece in response.content.iter_any():
        size += len(piece)
        if size > limit:
            response.close()  # unread bytes stay behind: the connection cannot be reused
            raise UpstreamProtocolError(
                f"The upstream's reply is larger than {limit} bytes.", code="upstream_reply_too_large"
            )
        parts.append(piece)
    return b"".join(parts)


def create_upstream_session(settings: UpstreamSettings) -> aiohttp.ClientSession:
    """The pooled session all upstream traffic shares."""
    connector = aiohttp.TCPConnector(limit=settings.max_connections)
    # No cookie jar: an API upstream sets none worth keeping, and filtering them costs every request.
    return aiohttp.ClientSession(
        connector=connector,
        read_bufsize=READ_BUFFER_BYTES,
        auto_decompress=True,
        cookie_jar=aiohttp.DummyCookieJar(),
    )


async def _read_up_to(content: aiohttp.StreamReader, limit: int) -> bytes:
    """Read until the body ends or `limit` bytes: one `read(limit)` returns only what is buffered."""
    pieces: list[bytes] = []
    size = 0
    while size < limit:
        piece = await content.read(limit - size)
        if not piece:
            break
        pieces.append(piece)
        size += len(piece)
    return b"".join(pieces)
