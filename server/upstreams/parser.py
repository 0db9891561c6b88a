"""Parse an HTTP/1.1 response as it arrives: the head, then a body framed by length, chunks or close.

Hand-written rather than httptools (llhttp): a paced stream's read is one small HTTP chunk, and
the fast path below (find the size line, slice the piece) costs about as much as a call into
the C parser plus its Python callbacks, without a native dependency (measured: see the commit).
"""

from __future__ import annotations

from enum import Enum

MAX_HEAD_BYTES = 64 * 1024  # status line and headers together (aiohttp: 8190 per line, 32 KiB of fields)
MAX_CHUNK_LINE_BYTES = 4096  # a chunk's size line with its extensions, or one trailer line

NO_BODY_STATUSES = frozenset((204, 304))


class MalformedResponse(Exception):
    """The upstream's bytes are not an HTTP/1.1 response this client can read."""


class Headers(dict[str, str]):
    """Response headers by lower-case name; lookups take any case. A repeated name keeps its values joined."""

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        """The value of `name`, whatever its case."""
        return super().get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())


class Framing(Enum):
    NONE = "none"
    LENGTH = "length"
    CHUNKED = "chunked"
    CLOSE = "close"


class _Chunked(Enum):
    SIZE = 0
    DATA = 1
    DATA_END = 2
    TRAILERS = 3


class ResponseParser:
    """One response: `feed()` the bytes as they arrive; the head, then the body's pieces come out."""

    __slots__ = (
        "_buffer",
        "_left",
        "_state",
        "complete",
        "framing",
        "headers",
        "keep_alive",
        "reason",
        "status",
    )

    def __init__(self) -> None:
        self._buffer = b""
        self._left = 0
        self._state = _Chunked.SIZE
        self.status = 0
        self.reason = ""
        self.headers = Headers()
        self.framing: Framing | None = None  # None until the head is read
        self.keep_alive = True
        self.complete = False

    @property
    def head_read(self) -> bool:
        """True once the status line and the headers are parsed."""
        return self.framing is not None

    def feed(self, data: bytes) -> bytes:
        """The body bytes in `data` (b"" while in the head); the rest waits for the next call.

        Raises MalformedResponse. Bytes after a complete response mean the connection cannot be
        reused: `keep_alive` turns False.
        """
        if self.framing is None:
            data = self._buffer + data if self._buffer else data
            self._buffer = b""
            end = data.find(b"\r\n\r\n")
            while end >= 0 and self._read_head(data[:end]):
                data = data[end + 4 :]  # an interim 1xx answer: its final answer follows
                end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > MAX_HEAD_BYTES:
                    raise MalformedResponse(f"The response head is larger than {MAX_HEAD_BYTES} bytes.")
                self._buffer = data
                return b""
            data = data[end + 4 :]
        framing = self.framing
        if framing is Framing.CHUNKED:
            return self._chunked(data)
        if framing is Framing.LENGTH:
            if len(data) < self._left:
                self._left -= len(data)
                return data
            piece, rest = data[: self._left], data[self._left :]
            self._left = 0
            self._finish(rest)
            return piece
        if framing is Framing.CLOSE:
            return data
        self._finish(data)
        return b""

    def end_of_input(self) -> None:
        """The connection closed: that ends a close-delimited body; any other unfinished response is cut."""
        if self.complete:
            return
        if self.framing is Framing.CLOSE:
            self.complete = True
            self.keep_alive = False
            return
        raise MalformedResponse("The connection closed before the response ended.")

    def _read_head(self, head: bytes) -> bool:
        """Parse one head; True when it was an interim (1xx) answer to skip."""
        if len(head) > MAX_HEAD_BYTES:
            raise MalformedResponse(f"The response head is larger than {MAX_HEAD_BYTES} bytes.")
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0") or len(parts[1]) != 3 or not parts[1].isdigit():
            raise MalformedResponse("The response's status line is not HTTP/1.x.")
        status = int(parts[1])
        if 100 <= status < 200 and status != 101:
            return True
        headers = self.headers
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip() or b" " in name:
                raise MalformedResponse("A response header line is malformed.")
            key = name.decode("latin-1").lower()
            text = value.strip().decode("latin-1")
            headers[key] = headers[key] + ", " + text if key in headers else text
        self.status = status
        self.reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
        connection = (headers.get("connection") or "").lower()
        self.keep_alive = "close" not in connection and (parts[0] == b"HTTP/1.1" or "keep-alive" in connection)
        self.framing = self._framing(status, headers)
        if self.framing is Framing.LENGTH and self._left == 0:
            self.framing = Framing.NONE
        return False

    def _framing(self, status: int, headers: Headers) -> Framing:
        if status in NO_BODY_STATUSES:
            return Framing.NONE
        coding = headers.get("transfer-encoding")
        if coding is not None:
            if coding.lower().rsplit(",", 1)[-1].strip() != "chunked":
                self.keep_alive = False
                return Framing.CLOSE
            if "content-length" in headers:
                self.keep_alive = False  # both framings: a smuggling risk, never reuse the connection
            return Framing.CHUNKED
        length = headers.get("content-length")
        if length is None:
            self.keep_alive = False
            return Framing.CLOSE
        if not length.isdigit():
            raise MalformedResponse("The response's Content-Length is not a number.")
        self._left = int(length)
        return Framing.LENGTH

    def _chunked(self, data: bytes) -> bytes:
        if self._buffer:
            data, self._buffer = self._buffer + data, b""
        pieces: list[bytes] = []
        at = 0
        size = len(data)
        while at < size and not self.complete:
            state = self._state
            if state is _Chunked.DATA:
                end = at + self._left
                if end > size:
                    pieces.append(data[at:])
                    self._left = end - size
                    break
                pieces.append(data[at:end])
                at = end
                self._state = _Chunked.DATA_END
                continue
            end = data.find(b"\r\n", at)
            if end < 0:
                if size - at > MAX_CHUNK_LINE_BYTES:
                    raise MalformedResponse("A chunk's size line is too long.")
                self._buffer = data[at:]
                break
            line = data[at:end]
            at = end + 2
            if state is _Chunked.SIZE:
                digits = line.split(b";", 1)[0].strip()
                try:
                    self._left = int(digits, 16)
                except ValueError:
                    raise MalformedResponse("A chunk's size is not hexadecimal.") from None
                if self._left < 0 or digits[:1] in (b"-", b"+") or b"_" in digits:
                    raise MalformedResponse("A chunk's size is not hexadecimal.")
                self._state = _Chunked.DATA if self._left else _Chunked.TRAILERS
            elif state is _Chunked.DATA_END:
                if line:
                    raise MalformedResponse("A chunk does not end where its size says.")
                self._state = _Chunked.SIZE
            elif not line:  # the empty line after the trailers: the body ended
                self._finish(data[at:])
                at = size
            elif len(line) > MAX_CHUNK_LINE_BYTES:
                raise MalformedResponse("A trailer line is too long.")
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _finish(self, rest: bytes) -> None:
        self.complete = True
        if rest:
            self.keep_alive = False  # bytes nobody asked for: this connection's framing is not to be trusted
