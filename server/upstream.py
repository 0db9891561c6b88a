"""The one way Sluice talks to the upstream chat API: open a stream, complete a chat, map failures.

One pooled `aiohttp.ClientSession` carries all upstream traffic. `AsyncOpenAI` runs on it through
the SDK's aiohttp transport and is the authority for the configuration (base URL, auth headers)
and for classifying failures (its error types, mapped in errors.py). Requests themselves go out on
the session directly, streaming or not: bench/ measured the SDK's request path at about 1 ms of
CPU per call (74 % of a non-streaming request's cost in the gateway: request building, option
models, auth wrapping), more than the gateway's whole latency budget, and its stream would build
a model object per chunk, where the relay forwards each chunk's bytes as they arrived.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx2
import openai
import orjson
import structlog
from openai._vendor.httpx_aiohttp import AiohttpTransport

from .chunks import Chunk, EventSplitter, MalformedChunk, parse_chunk
from .errors import UpstreamError, UpstreamProtocolError, map_upstream_error
from .settings import UpstreamSettings

log = structlog.get_logger("sluice.upstream")

# aiohttp stops reading the upstream once twice this is buffered: with a client that stopped
# reading, that buffer is what the stream holds (bench: 256 KiB here held ~1.4 MB of RSS per
# stalled reader). An event larger than this still arrives whole: readany() returns what is
# buffered and EventSplitter joins the pieces.
READ_BUFFER_BYTES = 1 << 14
ERROR_BODY_LIMIT = 64 * 1024


class UpstreamStream:
    """An open upstream stream: iterate its chunk batches, then `close()` it (always, in a finally)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.finished = False
        self.malformed = 0
        self._relayed_delta = False

    async def __aiter__(self) -> AsyncIterator[list[Chunk]]:
        """Batches of chunks, one per network read: what arrived together is relayed together."""
        splitter = EventSplitter()
        content = self._response.content
        while True:
            piece = await content.readany()
            batch: list[Chunk] = []
            for raw in splitter.feed(piece) if piece else splitter.close():
                try:
                    chunk = parse_chunk(raw)
                except MalformedChunk as exc:
                    # One bad chunk must not end a stream that is otherwise fine.
                    self.malformed += 1
                    log.warning("upstream_chunk_malformed", reason=str(exc), size=len(raw))
                    continue
                if chunk.done:
                    self.finished = True
                    break
                batch.append(chunk)
                if chunk.has_delta and not self._relayed_delta:
                    # The first token goes out before the rest of its read (a burst) is parsed.
                    self._relayed_delta = True
                    yield batch
                    batch = []
            if batch:
                yield batch
            if self.finished or not piece:
                return

    def close(self) -> None:
        """Return a finished connection to the pool; close an unfinished one, which stops the upstream."""
        if self.finished and self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class Upstream:
    """Open streams and complete chats against the configured upstream."""

    def __init__(self, client: openai.AsyncOpenAI, session: aiohttp.ClientSession, settings: UpstreamSettings) -> None:
        self.client = client
        self._session = session
        self._settings = settings
        self._url = str(client.base_url).rstrip("/") + "/chat/completions"
        self._headers = {
            **client.auth_headers,
            "Content-Type": "application/json",
            "User-Agent": "sluice",
        }
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout)
        self.consecutive_connect_failures = 0

    @property
    def is_down(self) -> bool:
        """True after `down_after_failures` consecutive connection failures."""
        return self.consecutive_connect_failures >= self._settings.down_after_failures

    async def open_stream(self, body: dict[str, Any], request_id: str) -> UpstreamStream:
        """Send a streaming request; return once the upstream answered 200, else raise UpstreamError."""
        return UpstreamStream(await self._send(body, request_id, accept="text/event-stream"))

    async def complete(self, body: dict[str, Any], request_id: str) -> bytes:
        """Send a non-streaming request; return the upstream's JSON body as received."""
        response = await self._send(body, request_id, accept="application/json")
        try:
            return await response.read()
        except aiohttp.ClientError as exc:
            log.warning("upstream_body_failed", error=type(exc).__name__)
            raise UpstreamProtocolError("The upstream connection failed before its reply was complete.") from exc
        finally:
            response.release()

    async def _send(self, body: dict[str, Any], request_id: str, *, accept: str) -> aiohttp.ClientResponse:
        """POST the chat request; return the response once it answered 200, else raise UpstreamError."""
        headers = {**self._headers, "Accept": accept, "X-Request-ID": request_id}
        try:
            response = await self._session.post(
                self._url, data=orjson.dumps(body), headers=headers, timeout=self._timeout
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._connection_failed(exc) from exc
        self.consecutive_connect_failures = 0
        if response.status != 200:
            raise await self._status_error(response)
        return response

    def _connection_failed(self, exc: BaseException) -> UpstreamError:
        request = httpx2.Request("POST", self._url)
        sdk_error: openai.APIConnectionError
        if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
            sdk_error = openai.APITimeoutError(request=request)
        else:
            self.consecutive_connect_failures += 1
            sdk_error = openai.APIConnectionError(request=request)
        log.warning("upstream_connect_failed", error=type(exc).__name__)
        return map_upstream_error(sdk_error)

    async def _status_error(self, response: aiohttp.ClientResponse) -> UpstreamError:
        """Read a bounded error body and map it the way the SDK would classify it."""
        try:
            content = await asyncio.wait_for(response.content.read(ERROR_BODY_LIMIT), self._settings.connect_timeout)
        except (aiohttp.ClientError, TimeoutError):
            content = b""
        finally:
            response.close()
        self.consecutive_connect_failures = 0
        httpx_response = httpx2.Response(
            response.status,
            headers=list(response.headers.items()),
            content=content,
            request=httpx2.Request("POST", self._url),
        )
        return map_upstream_error(self.client._make_status_error_from_response(httpx_response))


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


def create_sdk_client(session: aiohttp.ClientSession, settings: UpstreamSettings, base_url: str) -> openai.AsyncOpenAI:
    """AsyncOpenAI on the shared session; Sluice never retries on a client's behalf."""
    api_key = settings.api_key.get_secret_value() if settings.api_key is not None else "simulated"
    http_client = httpx2.AsyncClient(transport=AiohttpTransport(client=session))
    return openai.AsyncOpenAI(
        api_key=api_key,
        base_url=base_url,
        http_client=http_client,
        max_retries=0,
        timeout=httpx2.Timeout(settings.total_timeout, connect=settings.connect_timeout),
    )
