"""Parse an HTTP/1.1 response as it arrives: the head, then a body framed by length, chunks or close.

httptools (llhttp, in C) does the parsing: a paced stream's read is one small HTTP chunk, and
measured on this machine (min of 7 timeit runs) llhttp takes 0.29 µs for it against 2.8 µs for
a hand-written Python parser, 11 against 196 µs for a read of 64 events, and 1.7 against
14.5 µs for a whole short response with its head.
"""

from __future__ import annotations

import httptools

MAX_HEAD_BYTES = 64 * 1024  # status line and headers together (aiohttp: 8190 per line, 32 KiB of fields)

NO_BODY_STATUSES = frozenset((204, 304))
# Where providers name their own id of a request: OpenAI and most compatible servers, Anthropic's
# compatible API, Azure OpenAI. Their support asks for it; the access line's attempts carry it.
UPSTREAM_REQUEST_ID_HEADERS = (b"x-request-id", b"request-id", b"apim-request-id")
# The only response headers Sluice reads (framing, encoding, rate limits, the type of a stream's
# body, the upstream's own request id): the rest are not kept. A provider sends a dozen or two more
# (cookies, timings, rate-limit counters), and a stream's headers live as long as the stream: kept,
# they cost 1-2 KiB per live stream. The request id is taken out once read (client.py).
KEPT_HEADERS = frozenset(
    (b"content-length", b"transfer-encoding", b"content-encoding", b"retry-after", b"retry-after-ms")
).union((b"content-type", *UPSTREAM_REQUEST_ID_HEADERS))  # the type only when not EVENT_STREAM: see on_header
# The type of every healthy stream: read as its absence (UpstreamStream._read_first treats both
# alike), so not kept; only a body of another type (a JSON reply, an HTML page) keeps its type.
EVENT_STREAM = b"text/event-stream"


class MalformedResponse(Exception):
    """The upstream's bytes are not an HTTP/1.1 response this client can read."""


class Headers(dict[str, str]):
    """Response headers by lower-case name (those in KEPT_HEADERS); lookups take any case.

    A repeated name keeps its values joined.
    """

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        """The value of `name`, whatever its case."""
        return super().get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())


class ResponseParser:
    """One response: `feed()` the bytes as they arrive; the head, then the body's pieces come out.

    Also the parser's protocol: httptools calls the `on_*` methods while `feed()` runs. The C
    parser holds those methods, so the two make a cycle: it is dropped once the response is
    complete or its connection ended (`release()`), and reference counting frees both, not the
    collector (a cycle of nine objects per upstream request otherwise).
    """

    __slots__ = (
        "_close_delimited",
        "_head_bytes",
        "_parser",
        "_pieces",
        "complete",
        "head_read",
        "headers",
        "keep_alive",
        "status",
    )

    def __init__(self) -> None:
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._pieces: list[bytes] = []
        self._head_bytes = 0
        self._close_delimited = False
        self.status = 0
        self.headers = Headers()
        self.head_read = False
        self.keep_alive = True
        self.complete = False

    def feed(self, data: bytes | memoryview) -> bytes:
        """The body bytes in `data` (b"" while in the head). Raises MalformedResponse.

        Bytes after a complete response mean the connection cannot be reused: `keep_alive` turns False.
        """
        parser = self._parser
        if parser is None:  # complete, or its connection ended
            if data:
                self.keep_alive = False  # bytes nobody asked for, after the response
            return b""
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if not self.complete:
                raise MalformedResponse(f"The upstream's response is malformed ({exc}).") from None
            self.keep_alive = False  # bytes nobody asked for, after the response
        if self.complete:
            self._parser = None
        if not self.head_read:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                raise MalformedResponse(f"The response head is larger than {MAX_HEAD_BYTES} bytes.")
        pieces = self._pieces
        if not pieces:
            return b""
        body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        return body

    def end_of_input(self) -> None:
        """The connection closed: that ends a close-delimited body; any other unfinished response is cut."""
        if self.complete:
            return
        if self._close_delimited:
            self.complete = True
            self.keep_alive = False
            return
        raise MalformedResponse("The connection closed before the response ended.")

    def release(self) -> None:
        """Drop the C parser (its connection ended): nothing more is fed, and the cycle is broken."""
        self._parser = None

    # httptools' callbacks.

    def on_message_begin(self) -> None:
        if self.complete:
            self.keep_alive = False  # a second response nobody asked for: the framing is not to be trusted

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.complete:
            return  # a second response's: see on_message_begin
        lowered = name.lower()
        if lowered not in KEPT_HEADERS:
            return
        if lowered == b"content-type" and value[: len(EVENT_STREAM)].lower() == EVENT_STREAM:
            return
        key = lowered.decode("latin-1")
        text = value.decode("latin-1")
        headers = self.headers
        # The dict's own lookup: `key` is lower case already, and Headers' lookups are Python calls.
        kept = dict.get(headers, key)
        headers[key] = text if kept is None else kept + ", " + text

    def on_headers_complete(self) -> None:
        if self.complete:
            return
        parser = self._parser
        assert parser is not None  # httptools calls this from inside `feed()`
        status = parser.get_status_code()
        if 100 <= status < 200:
            self.headers = Headers()  # an interim answer: its final answer follows
            return
        self.status = status
        self.head_read = True
        headers = self.headers
        # The dict's own lookups, as in on_header: the names here are lower case.
        if (
            status not in NO_BODY_STATUSES
            and not dict.__contains__(headers, "content-length")
            and "chunked" not in (dict.get(headers, "transfer-encoding") or "").lower()
        ):
            self._close_delimited = True
            self.keep_alive = False

    def on_body(self, body: bytes) -> None:
        if not self.complete:
            self._pieces.append(body)

    def on_message_complete(self) -> None:
        if not self.head_read or self.complete:
            return  # the end of an interim answer, or of a second response
        parser = self._parser
        assert parser is not None  # httptools calls this from inside `feed()`
        self.complete = True
        self.keep_alive = self.keep_alive and parser.should_keep_alive()
