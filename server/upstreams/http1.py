"""One HTTP/1.1 connection to an upstream, on asyncio.Protocol: a request out, its response in.

The response's body is buffered for a reader that pulls (`read()`, reading stops past
READ_BUFFER_BYTES) or handed to a push consumer from the read's callback itself (`on_data`), with
no task between the socket and the relay: a paced stream's event is parsed and written in the
callback that read it.

Each read takes at most READ_BUFFER_BYTES from the socket (a buffered protocol, reading into one
buffer per `Connections`): uvloop's own reads take up to 256 KiB, and a stalled client's stream
then held a whole such read, parsed and encoded, in the client's write buffer (issue 14: 200
stalled readers cost 190-230 KiB each when the upstream was faster than the gateway, 60 KiB
when it was not, and kept 27-38 MiB after they left).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import socket
from collections.abc import Callable

from .parser import MalformedResponse, ResponseParser

# The most one read takes from the socket, and the body buffered unread past which reading
# stops: with a client that stopped reading, that is what the stream holds (at most twice this).
# An event larger than this still arrives whole: EventSplitter joins the pieces.
READ_BUFFER_BYTES = 1 << 14


def read_buffer() -> memoryview:
    """The buffer every connection of one `Connections` reads into (each read is consumed before the next)."""
    return memoryview(bytearray(READ_BUFFER_BYTES))


class ConnectionBroken(Exception):
    """The connection failed or closed before the response ended; `before_response`: before any of its bytes."""

    def __init__(self, message: str, *, before_response: bool = False) -> None:
        super().__init__(message)
        self.before_response = before_response


class Http1Connection(asyncio.BufferedProtocol):
    """A connection that carries one request at a time; `on_lost` tells its pool.

    `buffer` is where reads land: shared by the connections of one `Connections`, since each read is
    parsed (its body copied out) inside `buffer_updated`, before the loop starts another.
    """

    __slots__ = (
        "_body",
        "_eof",
        "_failure",
        "_head",
        "_loop",
        "_on_lost",
        "_parser",
        "_paused",
        "_read_into",
        "_received",
        "_size",
        "_waiter",
        "on_data",
        "reused",
        "transport",
    )

    def __init__(self, on_lost: Callable[[Http1Connection], None], buffer: memoryview) -> None:
        self.transport: asyncio.Transport | None = None
        # Its loop, held: on Python 3.11 each `asyncio.get_running_loop()` is a `getpid` system call.
        self._loop = asyncio.get_running_loop()
        self._read_into = buffer
        self._on_lost = on_lost
        self._parser: ResponseParser | None = None
        self._head: asyncio.Future[ResponseParser] | None = None
        self._body: list[bytes] = []
        self._size = 0
        self._eof = False
        self._failure: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._received = False
        self.reused = False
        # Set by a push consumer: called after each read's body was buffered, and at the end or failure.
        self.on_data: Callable[[], None] | None = None

    # The request.

    def send(self, request: bytes) -> asyncio.Future[ResponseParser]:
        """Write `request`; the future resolves with the parsed head, or fails with ConnectionBroken."""
        assert self.transport is not None
        self._parser = ResponseParser()
        self._body.clear()
        self._size = 0
        self._eof = False
        self._failure = None
        self._received = False
        self._head = self._loop.create_future()
        self.transport.write(request)
        return self._head

    @property
    def reusable(self) -> bool:
        """True when the response was read to its end and the connection may carry another request."""
        parser = self._parser
        return (
            parser is not None
            and parser.complete
            and parser.keep_alive
            and not self._body
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def idle(self) -> None:
        """The pool took this connection back: forget the finished response."""
        self.reused = True
        self._parser = None
        self._head = None
        self.on_data = None
        self.resume()

    def close(self) -> None:
        """Close the connection now: the upstream sees its end at once."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        # The transport closes its socket only on the loop's next turn, after every callback queued
        # before (when a crowd leaves: every other departing client's handler teardown). Shutting
        # the socket down sends the FIN now; close() then releases it as usual.
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                raw = socket.socket(fileno=sock.fileno())
                try:
                    raw.shutdown(socket.SHUT_RDWR)
                finally:
                    raw.detach()
        transport.close()

    def timer_fired(self) -> None:
        """Idle too long in its pool (its entry in the pool's Timers): close it."""
        self.close()

    # The body, for the response's reader.

    def take(self) -> bytes:
        """The body bytes buffered now (b"" if none); resumes reading if the buffer had stopped it."""
        body = self._body
        if not body:
            return b""
        data = body[0] if len(body) == 1 else b"".join(body)
        body.clear()
        self._size = 0
        if self._paused and self.on_data is None:
            self.resume()
        return data

    @property
    def at_eof(self) -> bool:
        """True once the body ended and every byte of it was taken."""
        return self._eof and not self._body

    @property
    def failure(self) -> Exception | None:
        """Why the body could not be read to its end, once it could not."""
        return self._failure

    async def read(self) -> bytes:
        """The next body bytes; b"" at the end. Raises ConnectionBroken or MalformedResponse."""
        while not self._body:
            if self._failure is not None:
                raise copy.copy(self._failure)  # see _fail
            if self._eof:
                return b""
            if self._paused:
                self.resume()
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.take()

    def pause(self) -> None:
        """Stop reading the socket: the kernel's buffers fill and the upstream slows."""
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        """Read the socket again."""
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    # asyncio.Protocol.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_into

    def buffer_updated(self, nbytes: int) -> None:
        self._received_bytes(self._read_into[:nbytes])

    def _received_bytes(self, data: memoryview) -> None:
        parser = self._parser
        if parser is None or parser.complete:
            self.close()  # bytes nobody asked for: the connection cannot be trusted with another request
            return
        try:
            self._received = True
            piece = parser.feed(data)
        except MalformedResponse as exc:
            self._fail(exc)
            self.close()
            return
        head = self._head
        if head is not None and parser.head_read:
            self._head = None
            if not head.done():
                head.set_result(parser)
        if piece:
            self._body.append(piece)
            self._size += len(piece)
        self._eof = parser.complete
        self._wake()
        if self._size > READ_BUFFER_BYTES and not self._eof:
            self.pause()

    def connection_lost(self, exc: Exception | None) -> None:
        parser = self._parser
        if parser is not None and not self._eof and self._failure is None:
            try:
                parser.end_of_input()
            except MalformedResponse:
                message = "The upstream closed the connection before its response ended."
                self._fail(ConnectionBroken(message, before_response=not self._received))
            else:
                self._eof = True
                self._wake()
        if parser is not None:
            parser.release()  # a response cut short, or refused as malformed: see ResponseParser
        self._on_lost(self)

    def _fail(self, failure: Exception) -> None:
        # Copies, without a traceback or a context: one that had been raised holds frames whose
        # locals hold this connection, a cycle that only the collector frees, with the request.
        self._failure = copy.copy(failure)
        head = self._head
        if head is not None:
            self._head = None
            if not head.done():
                head.set_exception(copy.copy(failure))
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.on_data is not None:
            self.on_data()
