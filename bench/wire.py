"""A minimal HTTP/1.1 client on `asyncio.Protocol`, so the load generator costs little per chunk.

An aiohttp client wakes a task for every read of a stream; at thousands of paced streams that
costs the load generator more CPU than the gateway it measures. Here a stream's bytes are scanned
inside `data_received` and only the end of a response wakes the waiting task.

It speaks exactly what the servers under test send: one request at a time per connection,
a status line and headers, then a `Content-Length` body or a chunked one. A chunked body is
not de-chunked: scanners look for byte patterns that the chunk framing never splits (aiohttp
writes each SSE event as one chunk), and the body ends with the last-chunk `\\r\\n0\\r\\n\\r\\n`,
which event data (JSON and `\\n` line ends) cannot contain.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from typing import Protocol, cast

LAST_CHUNK = b"\r\n0\r\n\r\n"
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:\s*chunked", re.IGNORECASE)
_CLOSE = re.compile(rb"\r\nconnection:\s*close", re.IGNORECASE)


class Scanner(Protocol):
    """Watches a 200 response's body bytes as they arrive."""

    def head(self) -> None:
        """The status line and headers of a 200 response arrived."""

    def feed(self, data: bytes, now: float) -> None:
        """Note `data`, received at `now` (perf_counter)."""


class Response:
    """One response being received: status and headers, then the body into a scanner or a buffer."""

    __slots__ = ("_head", "_remaining", "_tail", "body", "chunked", "done", "keep_alive", "scanner", "status")

    def __init__(self, scanner: Scanner | None) -> None:
        self.scanner = scanner
        self.status = 0
        self.chunked = False
        self.keep_alive = True
        self.done = False
        self.body = b""
        self._head = b""
        self._remaining = 0
        self._tail = b""

    def feed(self, data: bytes, now: float) -> None:
        """Take the next bytes of the connection; sets `done` at the end of the response."""
        if not self.status:
            rest = self._read_head(data)
            if rest is None:
                return
            data = rest
        if self.chunked:
            if self.scanner is None:
                self.body += data
            else:
                self.scanner.feed(data, now)
            tail = self._tail + data if len(data) < len(LAST_CHUNK) else data
            self._tail = tail[-len(LAST_CHUNK) :]
            self.done = self._tail == LAST_CHUNK
            return
        self._remaining -= len(data)
        if self.scanner is None:
            self.body += data
        else:
            self.scanner.feed(data, now)
        self.done = self._remaining <= 0

    def _read_head(self, data: bytes) -> bytes | None:
        """Parse the status line and headers once complete; return the body bytes after them."""
        head = self._head + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            self._head = head
            return None
        self._head = b""
        lines = head[: end + 2]
        self.status = int(lines[9:12])
        if self.status != 200:
            self.scanner = None  # an error body is kept whole, to say what went wrong
        elif self.scanner is not None:
            self.scanner.head()
        self.chunked = _CHUNKED.search(lines) is not None
        self.keep_alive = _CLOSE.search(lines) is None
        if not self.chunked:
            length = _CONTENT_LENGTH.search(lines)
            self._remaining = int(length.group(1)) if length is not None else 0
        return head[end + 4 :]


class Connection(asyncio.Protocol):
    """One keep-alive connection; `exchange()` sends a request and waits for its whole response."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._response: Response | None = None
        self._finished: asyncio.Future[Response] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but have its interface.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        response = self._response
        if response is None:
            return
        response.feed(data, time.perf_counter())
        if response.done:
            self._response = None
            if not response.keep_alive:
                self.close()
            if self._finished is not None and not self._finished.done():
                self._finished.set_result(response)

    def eof_received(self) -> bool | None:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._finished is not None and not self._finished.done():
            reason = f"connection closed mid-response: {exc!r}" if exc else "connection closed mid-response"
            self._finished.set_exception(ConnectionResetError(reason))
        self._response = None

    async def exchange(self, request: bytes, scanner: Scanner | None) -> Response:
        """Send `request` (head and body) and return its response once received in full."""
        if self.transport is None or self.closed:
            raise ConnectionResetError("the connection is closed")
        self._response = Response(scanner)
        self._finished = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self._finished

    def close(self) -> None:
        """Close the connection now (a client leaving mid-stream)."""
        self.closed = True
        self._response = None
        if self.transport is not None:
            self.transport.close()


async def connect(host: str, port: int, receive_buffer: int | None = None) -> Connection:
    """Open a connection to `host:port`, with a fixed kernel receive buffer when given."""
    loop = asyncio.get_running_loop()
    if receive_buffer is None:
        _, protocol = await loop.create_connection(Connection, host, port)
        return protocol
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Set before connecting, so the window is small from the handshake on (and never autotuned).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, (host, port))
    except OSError:
        sock.close()
        raise
    _, protocol = await loop.create_connection(Connection, sock=sock)
    return protocol


def request_head(method: str, path: str, host: str, body: bytes, headers: dict[str, str]) -> bytes:
    """The request line and headers for a body of `body`'s length."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines.extend(f"{name}: {value}" for name, value in headers.items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
