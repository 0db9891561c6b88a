"""The connection protocol requests are served on: aiohttp's, with Sluice's answer to broken HTTP.

aiohttp answers a request it cannot parse (a bad request line or method, a header over 8 KiB, a
broken chunked body) itself, before any middleware runs, from `RequestHandler.handle_error`: a
plain-text 400 (HTML for a browser) that quotes the bytes it refused. `GatewayProtocol` answers
with the gateway's JSON envelope instead, code `invalid_http`, naming only the kind of fault.

A fault in the middle of a body being read ends that body at once (`watch_framing`). aiohttp
queues the fault as the connection's next request and leaves the body waiting for bytes that will
never come: the client got a 408 after `body_timeout` (15 s). The body's reader now fails, and the
chain answers `400 invalid_body` and closes the connection (middleware/errors.py).

aiohttp builds this protocol itself, with no way to name its class, so `serve_with_gateway_protocol`
gives each connection this class from the application's request factory, which sees every
request, the unparsable one included, before it is served. The class adds no state (same slots).

The same factory hides `Expect` from aiohttp on a request that no route reading a body will take
(`BODY_ROUTES`): aiohttp answers it before any middleware, and for a request
no route matches (a 404 or 405) with its own `100 Continue`, inviting a body that nothing reads.

A body left unread is read away for a short linger after the answer (`close_after_response`), so
the client reads its answer rather than a reset; an encoded one undecoded (`_UndecodedDrain`).

Every answer says `Server: sluice` (SERVER_NAME), never aiohttp's default, which names the exact
Python and aiohttp versions. The chain's response hook sets it (middleware/request_id.py); this
protocol's answers, to a request no route saw, run no hook, and set it themselves.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, cast

from aiohttp import hdrs, http_exceptions, web
from aiohttp.compression_utils import HAS_BROTLI, HAS_ZSTD
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler, RequestPayloadError, _ErrInfo
from multidict import CIMultiDict, CIMultiDictProxy

from .errors import GatewayError, InvalidRequestError, UnsupportedMediaTypeError
from .lean_connection import limit_unread_responses

# (method, route) of the handlers that read a body. The chain reads only their bodies (middleware/
# body.py): any other body is left unread, its connection closed after the answer, so nobody can
# park one anywhere; and only they are let see `Expect` (`serve_with_gateway_protocol`).
BODY_ROUTES = frozenset(
    {
        ("POST", "/chat"),
        ("POST", "/chat/stream"),
        ("POST", "/chat/streams"),
        ("POST", "/v1/chat/completions"),
    }
)

# The request body encodings aiohttp decodes: br and zstd only with their optional decoders
# installed (`brotli`, `backports.zstd` before Python 3.14), which requirements.lock does not pin.
DECODED = frozenset(("identity", "gzip", "deflate", *(("br",) if HAS_BROTLI else ()), *(("zstd",) if HAS_ZSTD else ())))
_DECODED_NAMES = ", ".join(sorted(DECODED - {"identity"}))


def unsupported_encoding() -> UnsupportedMediaTypeError:
    """The 415 for a body in an encoding Sluice does not decode."""
    return UnsupportedMediaTypeError(
        f"Sluice reads request bodies as they are, or encoded with one of: {_DECODED_NAMES}.",
        code="unsupported_content_encoding",
        param="Content-Encoding",
    )


# What each of aiohttp's parse errors says, without the client's bytes (a key, a token, a prompt).
# The first class in the table that the error is an instance of names it.
_FAULTS: tuple[tuple[type[BaseException], str], ...] = (
    (http_exceptions.BadHttpMethod, "The request's method is not a valid HTTP method."),
    (http_exceptions.BadStatusLine, "The request line is not valid HTTP/1.1."),
    (http_exceptions.LineTooLong, "The request line or a header is longer than the gateway accepts."),
    (http_exceptions.InvalidHeader, "A request header is not valid HTTP/1.1."),
    (http_exceptions.InvalidURLError, "The request's target is not a valid URL."),
    (http_exceptions.ContentEncodingError, "The request body does not decode as its Content-Encoding says."),
    (http_exceptions.PayloadEncodingError, "The request body's framing (chunked or Content-Length) is broken."),
)
_ANY_FAULT = "The request is not valid HTTP/1.1."

# The Server header of every answer. aiohttp only fills it in when a response has none, with
# `Python/3.11 aiohttp/3.14.5`: versions a scanner flags on a gateway that faces the internet.
SERVER_NAME = "sluice"


class GatewayProtocol(RequestHandler):
    """aiohttp's connection protocol, answering broken HTTP with the JSON envelope."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The envelope for a request aiohttp refused (or a handler failure aiohttp caught), connection closed."""
        # aiohttp's own logs it (logs.MalformedRequestFilter turns that into `malformed_http_request`)
        # and refuses a second answer once a response began: keep both, drop its plain text.
        super().handle_error(request, status, exc, message)
        error = _error_for(status, exc)
        response = web.json_response(error.body(), status=error.status)
        # A request aiohttp could not parse was never routed: no response hook runs for its answer.
        response.headers[hdrs.SERVER] = SERVER_NAME
        response.force_close()
        return response


def _error_for(status: int, exc: BaseException | None) -> GatewayError:
    if status >= 500:
        return GatewayError("Sluice failed to handle the request.", status=status)
    if isinstance(exc, http_exceptions.ContentEncodingError) and _without_decoder(exc):
        # br or zstd without its decoder installed: aiohttp refuses the body as it parses it. (One
        # Sluice decodes fails the same way when its bytes are corrupt: that is a 400 below.)
        return unsupported_encoding()
    text = next((text for kind, text in _FAULTS if isinstance(exc, kind)), _ANY_FAULT)
    return InvalidRequestError(text, code="invalid_http", status=status)


def _without_decoder(exc: BaseException) -> bool:
    """True when aiohttp refused a body for want of its decoder: its message names the encoding, `(br)`."""
    text = str(exc)
    return any(f"({name})" in text for name in ("br", "zstd") if name not in DECODED)


def serve_with_gateway_protocol(app: web.Application, send_timeout: float) -> None:
    """Serve `app`'s connections on `GatewayProtocol` (call before the app is run or frozen).

    Each connection's first request also bounds how long its responses may go unread
    (`lean_connection.limit_unread_responses`, `send_timeout` seconds).
    """
    make_request = app._make_request

    def request_factory(message: Any, payload: Any, protocol: RequestHandler, writer: Any, task: Any) -> web.Request:
        if type(protocol) is RequestHandler:  # the connection's first request
            protocol.__class__ = GatewayProtocol
            limit_unread_responses(protocol.transport, send_timeout)
        if hdrs.EXPECT in message.headers and (message.method, message.url.path) not in BODY_ROUTES:
            message = _without_expectation(message)
        return make_request(message, payload, protocol, writer, task)

    # aiohttp hands `app._make_request` to its Server as the request factory when the app runs.
    app._make_request = request_factory  # type: ignore[method-assign,assignment]


def _without_expectation(message: Any) -> Any:
    """`message` (a parsed request) without its `Expect` header."""
    headers = CIMultiDict(message.headers)
    headers.popall(hdrs.EXPECT)
    raw = tuple((name, value) for name, value in message.raw_headers if name.lower() != b"expect")
    return message._replace(headers=CIMultiDictProxy(headers), raw_headers=raw)


# Seconds a connection goes on reading (and discarding) a request body it left unread after the
# answer, before it closes. Long enough for a client still uploading (a 401 or 413 met mid-body) to
# finish and read its answer: closed with unread bytes, the kernel would send a reset, which can
# reach the client before it read the answer. Short, and the connection cap closes such a
# connection first (connections.close_idle_connections): a client that declares a body and never
# sends it holds nothing for long (aiohttp's own lingering is 10 s, the connection busy all along).
REFUSED_BODY_LINGER = 2.0
# An encoded body (gzip, deflate, br, zstd) lingers undecoded: its bytes are dropped as they come
# (`_UndecodedDrain`). aiohttp would decode what its lingering reads: a 1 MB gzip body of zeros is
# 1 GB decoded, 2 s of CPU for a request refused without a key.


class LingeringProtocol(GatewayProtocol):
    """A connection that answered without reading its request's body, and closes after a short linger."""

    __slots__ = ()


def close_after_response(request: web.BaseRequest) -> None:
    """Close `request`'s connection after a short linger once its response is written (see REFUSED_BODY_LINGER).

    `response.force_close()` alone leaves aiohttp's lingering at 10 s: only the connection's own
    lingering time shortens it (`_lingering_time`, an aiohttp 3.14 internal, read once the handler
    returned). The connection is marked (its class, which adds no state) so that the connection
    cap may close it at once.
    """
    protocol = request.protocol
    if type(protocol) is GatewayProtocol or type(protocol) is RequestHandler:
        protocol.__class__ = LingeringProtocol
    if hasattr(protocol, "_lingering_time"):
        protocol._lingering_time = REFUSED_BODY_LINGER
    if request.content.total_compressed_bytes is not None:  # aiohttp decodes this body
        _drain_undecoded(request)


def _drain_undecoded(request: web.BaseRequest) -> None:
    """Drop the rest of `request`'s encoded body as it arrives, undecoded, instead of parsing it.

    The connection's parser (`_parser`, an aiohttp 3.14 internal, fed every byte the connection
    receives) is replaced: what the old one holds undecoded goes with it. The body ends (and the
    lingering with it) at its declared length, or after `client_max_size` bytes, the most the
    gateway would ever have read; a chunked body, whose end only its framing tells, at the latter
    or when the linger is over. Left as it is when not found as expected.
    """
    protocol = request.protocol
    if getattr(protocol, "_parser", None) is None:
        return
    content = request.content
    budget = request.client_max_size
    length = request.content_length
    if length is not None:
        # aiohttp hands each received slice of the body to the decoder whole: all counted here.
        budget = min(budget, length - content.total_raw_bytes)
    drain = _UndecodedDrain(content, budget)
    protocol._parser = drain  # type: ignore[assignment]
    protocol.resume_reading()  # held while the body's decoded bytes waited unread
    drain.feed_data(b"")  # all of it came already: the body ends now


class _UndecodedDrain:
    """Stands in for the connection's HTTP parser: counts the bytes it is fed, and drops them."""

    __slots__ = ("_content", "_left")

    def __init__(self, content: StreamReader, left: int) -> None:
        self._content = content
        self._left = left

    def feed_data(self, data: bytes) -> tuple[tuple[()], bool, bytes]:
        """No request, no upgrade, no tail; the body ends once its bytes are all in."""
        self._left -= len(data)
        if self._left <= 0 and not self._content.is_eof():
            self._content.feed_eof()
        return (), False, b""

    def pause_reading(self) -> None:
        """Nothing to pause: nothing is decoded."""

    def message_consumed(self) -> None:
        """No queue of requests to free a slot in."""


def watch_framing(request: web.BaseRequest) -> Callable[[], None]:
    """Fail `request`'s body at once if the connection's framing breaks while it is read; return the undo.

    aiohttp appends the fault to the connection's queue of parsed requests (`_messages`, an aiohttp
    3.14 internal), which nothing reads while this request is served: for as long as the body is
    read, the queue is a stand-in that notices the fault. Left as it is when not found as expected.
    """
    protocol = request.protocol
    queue = getattr(protocol, "_messages", None)
    if type(queue) is not deque:
        return _nothing
    watch = _FramingWatch(request.content)
    for item in queue:  # a fault that came before this request's body was awaited
        watch.append(item)
    queue.clear()
    protocol._messages = watch  # type: ignore[assignment]

    def undo() -> None:
        if cast(object, protocol._messages) is watch:
            queue.extend(watch)
            protocol._messages = queue

    return undo


class _FramingWatch(list[Any]):
    """The connection's request queue while a body is read: a parse fault appended fails that body."""

    __slots__ = ("_content",)

    def __init__(self, content: StreamReader) -> None:
        super().__init__()
        self._content = content

    def append(self, item: Any) -> None:
        """Queue `item` as aiohttp does; when it is a parse fault, fail the body being read."""
        super().append(item)
        if type(item[0]) is _ErrInfo and not self._content.is_eof():
            self._content.set_exception(RequestPayloadError("the request's framing broke mid-body"))

    def popleft(self) -> Any:
        """The oldest request, as `deque.popleft` (not called while a body is read)."""
        return self.pop(0)


def _nothing() -> None:
    pass
