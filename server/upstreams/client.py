"""Talk to one configured upstream: open a stream, complete a chat, probe it; map its failures.

Requests go out on Sluice's own HTTP/1.1 connections (connections.py, http1.py), not an SDK's
(bench/ measured the SDK's request path at about 1 ms of CPU per call) nor aiohttp's client
(13-18 % of the gateway's CPU per 1-token stream); the relay forwards each chunk's bytes as they arrived.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import orjson
import structlog

from ..access import RequestRecord
from ..chunks import MAX_EVENT_BYTES
from ..errors import UpstreamError
from ..logs import connection_error_fields
from ..settings import UpstreamEntry, UpstreamSettings
from .connections import Connections, OriginPool
from .failures import (
    check_completion,
    connect_failure,
    key_pieces,
    malformed_reply,
    redacted,
    status_failure,
    timeout_failure,
    unusable_reply,
)
from .http1 import ConnectionBroken
from .parser import UPSTREAM_REQUEST_ID_HEADERS, MalformedResponse
from .portable import portable
from .response import BOM, UpstreamResponse
from .stream import UpstreamStream

log = structlog.get_logger("sluice.upstream")

ERROR_BODY_LIMIT = 64 * 1024
MAX_REPLY_BYTES = 16 << 20
PROBE_BODY_LIMIT = 1 << 20
UPSTREAM_REQUEST_ID_NAMES = tuple(name.decode() for name in UPSTREAM_REQUEST_ID_HEADERS)
MAX_UPSTREAM_REQUEST_ID = 128


class UpstreamClient:
    """One upstream of the configuration, with the count of requests in flight to it."""

    def __init__(
        self,
        entry: UpstreamEntry,
        connections: Connections,
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
        self._settings = settings
        self._origin: OriginPool = connections.pool(entry.base_url)
        self._timers = connections.timers
        self._portable = entry.portable_body
        # Masked in every error the upstream sends back: it may quote the key it was given.
        self._key_pieces = key_pieces(entry.api_key.get_secret_value() if entry.api_key is not None else None)
        # Everything of a request but its Accept, X-Request-ID, Content-Length and body, built once.
        parts = urlsplit(entry.base_url)
        path = parts.path.rstrip("/")
        # A base URL's query goes on every request: Azure's classic API names its version there.
        query = "?" + parts.query if parts.query else ""
        host = parts.netloc.rpartition("@")[2]
        fixed = [f"Host: {host}", "User-Agent: sluice"]
        if (key := entry.key_header()) is not None:
            fixed.append(f"{key[0]}: {key[1]}")
        common = "".join(line + "\r\n" for line in fixed).encode("latin-1")
        self._chat_head = f"POST {path}/chat/completions{query} HTTP/1.1\r\n".encode("latin-1") + common
        self._chat_head += b"Content-Type: application/json\r\n"
        self._models_request = f"GET {path}/models{query} HTTP/1.1\r\n".encode("latin-1") + common
        self._models_request += b"Accept: application/json\r\n\r\n"

    @property
    def full(self) -> bool:
        """True when `max_concurrency` requests are in flight."""
        cap = self.entry.max_concurrency
        return cap > 0 and self.in_flight >= cap

    async def open_stream(
        self,
        body: dict[str, Any],
        request_id: str,
        on_accepted: Callable[[], None] | None = None,
        *,
        record: RequestRecord | None = None,
    ) -> UpstreamStream:
        """Send a streaming request; return once its first token arrived, else raise UpstreamError.

        `on_accepted` is called when the upstream answered 200, before its first token; a resend
        (see `_exchange`) is noted on `record`.
        """
        self.in_flight += 1
        response: UpstreamResponse | None = None
        stream: UpstreamStream | None = None
        # One deadline for both, moved on when the headers came; an entry of the shared Timers,
        # where `asyncio.timeout` made and cancelled two loop timers per stream (8 us against 1).
        timers = self._timers
        try:
            with timers.deadline(timers.time() + self._settings.header_timeout) as deadline:
                response = await self._send(body, request_id, accept=b"text/event-stream", record=record)
                if (response.headers.get("content-encoding") or "identity").strip().lower() != "identity":
                    # None was asked for; decoding a stream's pieces is not worth its cost.
                    raise unusable_reply(
                        "The upstream's stream is compressed, which Sluice does not decode.",
                        code="upstream_encoding_unsupported",
                    )
                stream = UpstreamStream(
                    response,
                    self.name,
                    on_close=self._done,
                    max_event_bytes=self._max_event_bytes,
                    key_pieces=self._key_pieces,
                )
                deadline.reschedule(timers.time() + self._settings.first_token_timeout)
                if on_accepted is not None:
                    on_accepted()
                await stream.prime()
                return stream
        except TimeoutError:
            if stream is not None:
                stream.close()
                raise timeout_failure("first_token_timeout", "The upstream sent no token in time.") from None
            if response is not None:
                response.close()  # the deadline passed just as the answer came: its connection is taken
            self._done()
            raise timeout_failure("header_timeout", "The upstream sent no response headers in time.") from None
        except BaseException:
            if stream is not None:
                stream.close()
                raise
            if response is not None:
                response.close()
            self._done()
            raise

    async def complete(self, body: dict[str, Any], request_id: str, *, record: RequestRecord | None = None) -> bytes:
        """Send a non-streaming request; return the upstream's JSON body as received (decoded).

        A resend (see `_exchange`) is noted on `record`.
        """
        self.in_flight += 1
        try:
            response = await self._send(body, request_id, accept=b"application/json", record=record)
            try:
                reply = await response.read_bounded(self._max_reply_bytes)
            except (ConnectionBroken, MalformedResponse, OSError) as exc:
                # The upstream answered and may have generated the whole completion: asked again,
                # it would be paid for again. A reply it cut short is for another upstream to give.
                log.warning("upstream_body_failed", upstream=self.name, error=type(exc).__name__)
                response.close()
                raise malformed_reply("The upstream's reply was cut short.") from exc
            except BaseException:
                response.close()
                raise
            response.release()
            reply = reply.removeprefix(BOM)  # JSON parsers, the clients' too, refuse a reply starting with one
            try:
                check_completion(reply)
            except UpstreamError as failure:
                raise redacted(failure, self._key_pieces) from None
            return reply
        finally:
            self._done()

    async def probe(self) -> int | None:
        """The status GET <base_url>/models answers with; None when no answer came."""
        try:
            async with asyncio.timeout(self._settings.connect_timeout * 2):
                response = await self._exchange(self._models_request)
                try:
                    await response.read_bounded(PROBE_BODY_LIMIT)
                finally:
                    response.close()
        except (UpstreamError, ConnectionBroken, MalformedResponse, OSError, TimeoutError):
            return None
        return response.status

    def _done(self) -> None:
        self.in_flight -= 1

    def _send(
        self, body: dict[str, Any], request_id: str, *, accept: bytes, record: RequestRecord | None
    ) -> Awaitable[UpstreamResponse]:
        """POST the chat request; the response once it answered 200, else UpstreamError raised.

        A portable upstream's body goes without Sluice's own fields (see portable.py); any other's as it is.
        Not a coroutine of its own: the caller awaits `_exchange`'s directly.
        """
        payload = orjson.dumps(portable(body) if self._portable else body)
        rid = request_id.encode("latin-1")
        if rid.find(b"\r") >= 0 or rid.find(b"\n") >= 0:
            raise ValueError("A request ID cannot hold a line break.")
        request = b"".join(
            (
                self._chat_head,
                b"Accept: ",
                accept,
                b"\r\nX-Request-ID: ",
                rid,
                b"\r\nContent-Length: ",
                str(len(payload)).encode(),
                b"\r\n\r\n",
                payload,
            )
        )
        return self._exchange(request, record, chat=True)

    async def _exchange(
        self, request: bytes, record: RequestRecord | None = None, *, chat: bool = False
    ) -> UpstreamResponse:
        """Send `request` and return once its head arrived; a reused connection that fails first is retried.

        Keep-alive's standard race: the upstream may close an idle connection just as a request is
        written to it, so it goes once more on a fresh connection. Most often it never reached the
        upstream, but one that read it and then reset may have taken it: the resend is logged
        (`upstream_request_resent`, with the request's id) and counted on `record` (the access
        line's `resent`), so a POST processed twice can be traced. It is not one of the routing's
        `attempts`: no breaker judges it, no retry budget pays for it.
        Raises UpstreamError for a connection that cannot be opened, ConnectionBroken or
        MalformedResponse for one that fails or answers badly; with `chat` (a chat request, see
        `_send`: one coroutine for both) those two are mapped to UpstreamError too, and so is a
        status other than 200.
        """
        origin = self._origin
        fresh = False
        try:
            while True:
                # An idle connection without awaiting: `acquire`'s coroutine only when there is none.
                connection = None if fresh else origin.take_idle()
                try:
                    if connection is None:
                        connection = await origin.acquire(fresh=fresh)
                except TimeoutError as exc:
                    log.warning("upstream_connect_failed", upstream=self.name, **self._fields(exc))
                    raise timeout_failure() from exc
                except OSError as exc:
                    log.warning("upstream_connect_failed", upstream=self.name, **self._fields(exc))
                    raise connect_failure() from exc
                try:
                    head = await connection.send(request)
                except ConnectionBroken as exc:
                    origin.release(connection)
                    if exc.before_response and connection.reused and not fresh:
                        fresh = True
                        method = request[: request.find(b" ")].decode("latin-1")
                        log.info("upstream_request_resent", upstream=self.name, method=method, **self._fields(exc))
                        if record is not None:
                            record.extra["resent"] = record.extra.get("resent", 0) + 1
                        continue
                    raise
                except BaseException:
                    connection.close()
                    origin.release(connection)
                    raise
                response = UpstreamResponse(head, connection, origin)
                if record is not None:
                    _note_upstream_request_id(record, self.name, response.headers)
                break
        except ConnectionBroken as exc:
            if not chat:
                raise
            if not exc.before_response:
                # Cut inside its head: it answered, so the request was taken (and may be paid for).
                log.warning("upstream_reply_malformed", upstream=self.name, error=type(exc).__name__)
                raise malformed_reply("The upstream's response was cut short in its head.") from exc
            log.warning("upstream_connect_failed", upstream=self.name, **self._fields(exc))
            raise connect_failure() from exc
        except MalformedResponse as exc:
            if not chat:
                raise
            # Not HTTP/1.1 this client can read (a folded header, bare LF line ends, two lengths):
            # the upstream did answer, and would answer the same again.
            log.warning("upstream_reply_malformed", upstream=self.name, error=type(exc).__name__)
            raise malformed_reply("The upstream's response is not valid HTTP/1.1.") from exc
        if chat and response.status != 200:
            raise await self._status_error(response)
        return response

    def _fields(self, exc: BaseException) -> dict[str, object]:
        fields = connection_error_fields(exc)
        fields.setdefault("host", self._origin.host)
        fields.setdefault("port", self._origin.port)
        return fields

    async def _status_error(self, response: UpstreamResponse) -> UpstreamError:
        """Read a bounded error body and map it through the failure table."""
        try:
            async with asyncio.timeout(self._settings.connect_timeout):
                content = await response.read_up_to(ERROR_BODY_LIMIT)
        except (ConnectionBroken, MalformedResponse, OSError, TimeoutError):
            content = b""
            response.close()
        except BaseException:
            response.close()
            raise
        else:
            # Kept when its body was read to the end: the retry after a 429 or a 5xx then needs no
            # new connection (under a storm of them, a TLS handshake per retry).
            response.release()
        return redacted(status_failure(response.status, response.headers, content.removeprefix(BOM)), self._key_pieces)


def _note_upstream_request_id(record: RequestRecord, upstream: str, headers: dict[str, str]) -> None:
    """Take the upstream's own id of the request out of its headers, onto `record` until its attempt is noted."""
    for name in UPSTREAM_REQUEST_ID_NAMES:
        if (value := headers.pop(name, None)) is not None:
            if record.upstream_request_ids is None:
                record.upstream_request_ids = {}
            # Bounded: a header is up to 8 KiB, and this one goes into a log line.
            record.upstream_request_ids[upstream] = value[:MAX_UPSTREAM_REQUEST_ID]
            return


def create_upstream_connections(settings: UpstreamSettings) -> Connections:
    """The connection pools all upstream traffic shares."""
    return Connections(max_connections=settings.max_connections, connect_timeout=settings.connect_timeout)
