"""The SSE response every stream is written to: aiohttp-sse's, tuned for relaying.

Events arrive already encoded (see dialects.py) and are written with `write()`, skipping the
per-event string building of `send()`. aiohttp-sse supplies the headers, refuses compression and
sets TCP_USER_TIMEOUT so the kernel drops a peer that stops acknowledging. The heartbeat is a
timer, not aiohttp-sse's task: a task per stream cost two loop turns (started, then cancelled
and awaited at the end) and left a cycle for the collector (the cancelled task's error holds the
response); a task runs only for a heartbeat that finds the client's buffer full. The timer is an
entry in the application's `Timers` when given one (timers.py): a loop timer of its own cost a
live stream about 550 bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

import structlog
from aiohttp import ClientConnectionResetError, HttpVersion11, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_writer import StreamWriter
from aiohttp.web_request import BaseRequest
from aiohttp_sse import EventSourceResponse

from .client_gone import watch as watch_client_gone
from .lean_connection import note_socket_tuned, socket_tuned
from .lean_connection import release as release_connection_buffers
from .timers import Entry, Timers

log = structlog.get_logger("sluice.sse")
HEARTBEAT = b": keep-alive\n\n"
_TCP_USER_TIMEOUT: int | None = getattr(socket, "TCP_USER_TIMEOUT", None)
# The client transport's write buffer: above HIGH a write waits (backpressure), below LOW it goes
# on. uvloop's default 64 KiB, plus the 64 KiB aiohttp writes between drains, is what a stalled
# reader holds in the gateway; small marks keep that near 80 KiB, and a paced stream never
# comes close to either.
WRITE_BUFFER_HIGH = 16 * 1024
SEND_BUFFER_BYTES = 64 * 1024  # the kernel doubles it for its bookkeeping
WRITE_BUFFER_LOW = 4 * 1024
# aiohttp-sse's headers, in its order, with Sluice's Cache-Control (proxies must not transform a stream).
_HEADERS = (
    ("Content-Type", "text/event-stream"),
    ("Cache-Control", "no-cache, no-transform"),
    ("Connection", "keep-alive"),
    ("X-Accel-Buffering", "no"),
)


def close_at_the_end_for_http_1_0(response: web.StreamResponse, request: BaseRequest) -> None:
    """Before `prepare`: an HTTP/1.0 client's stream closes its connection at its end.

    HTTP/1.0 has no chunked framing: a body of unknown length ends with the connection. aiohttp
    keeps a keep-alive request's connection open anyway, so the client waited for more.
    """
    if request.version < HttpVersion11:
        response.force_close()
        response.headers["Connection"] = "close"


class SSEResponse(EventSourceResponse):
    """A text/event-stream response that never buffers, never compresses and keeps itself alive."""

    _send_headers_immediately = False  # see prepare

    def __init__(
        self,
        *,
        heartbeat_interval: float,
        send_timeout: float,
        on_heartbeat: Callable[[], None] | None = None,
        on_stalled: Callable[[], None] | None = None,
        preamble: bytes = b"",
        timers: Timers | None = None,
    ) -> None:
        # What aiohttp-sse's __init__ sets (tests/test_sse_response.py compares the two), without
        # its layer and five header writes per stream: the headers in one go, in its order, with
        # Sluice's Cache-Control.
        web.StreamResponse.__init__(self, headers=_HEADERS)
        if heartbeat_interval <= 0:
            raise ValueError("ping interval must be positive")
        self._ping_interval = heartbeat_interval
        self._ping_task: asyncio.Task[None] | None = None
        self._sep = "\n"
        self._allow_all_methods = True
        # aiohttp-sse also sets TCP_USER_TIMEOUT from this: a backstop, and the gateway's own
        # timer ends a stalled stream first and logs why. Three times the limit, not two: the
        # kernel counts zero-window probes, not seconds, and with a 1 s limit cut a pushed
        # stream at 1.4 s, before the timer, whose clock restarts each time the gateway's own
        # send buffer takes more (tests/test_streaming_process.py, the send timeout test).
        self._send_timeout: float | None = send_timeout * 3
        self._saved_tcp_user_timeout: int | None = None
        self._tcp_sock: socket.socket | None = None
        self._on_heartbeat = on_heartbeat
        self._on_stalled = on_stalled
        self._ping_send_timeout = send_timeout
        self._request: BaseRequest | None = None
        # Goes out ahead of the first write, event or heartbeat (the native dialect's `retry:`
        # line): written alone it cost a send per stream.
        self._preamble = preamble
        self._timers = timers if timers is not None else Timers()
        self._beat: Entry | None = None
        self._beats_stopped = False
        self._tuned_already = False  # the connection's socket options were set and noted for this send timeout

    @property
    def heartbeat_pending(self) -> bool:
        """True while a heartbeat is due (its timer) or under way (a write waiting for room)."""
        return self._beat is not None or (self._ping_task is not None and not self._ping_task.done())

    def timer_fired(self) -> None:
        """Send a heartbeat (Timers calls this every interval)."""
        # A comment the OpenAI SDKs' parsers skip, counted for metrics: written at once from the
        # timer, unless the client's buffer is over its mark.
        self._beat = None
        try:
            room = self.send_now(HEARTBEAT)
        except (ConnectionResetError, RuntimeError):
            return  # the client left, or the body ended
        if room:
            self._heartbeat_sent()
        else:
            self._ping_task = asyncio.get_running_loop().create_task(self._heartbeat_waits())

    async def _heartbeat_waits(self) -> None:
        """Wait for the client to take the heartbeat, at most the send timeout."""
        try:
            async with asyncio.timeout(self._ping_send_timeout):
                await self.wait_for_room()
        except TimeoutError:
            # The client accepts nothing: let the stream's owner end it (and log why).
            if self._on_stalled is not None:
                self._on_stalled()
            else:
                self._abort_transport()
            return
        except (ConnectionResetError, RuntimeError):
            return
        self._heartbeat_sent()

    def _heartbeat_sent(self) -> None:
        if self._on_heartbeat is not None:
            self._on_heartbeat()
        if not self._eof_sent and not self._beats_stopped:
            self._beat = self._timers.later(self._ping_interval, self)

    def _flush_headers(self) -> None:
        # Nothing was written in the loop turn that prepared the response: send the headers alone.
        writer = self._payload_writer
        if writer is not None:
            try:  # noqa: SIM105  # not `contextlib.suppress`: three calls more per stream
                writer.send_headers()
            except ConnectionResetError:
                pass

    def _set_tcp_user_timeout(self, request: BaseRequest) -> None:
        # aiohttp-sse reads the old value, sets its own, and restores the old one at the end: three
        # system calls per stream. Once per connection is enough: the value stays for the
        # connection's later requests, where a kernel backstop at twice the send timeout does no
        # harm. A keep-alive client's later streams find it noted on the connection (prepare notes
        # it): the socket object and system calls cost some 10 us a stream.
        if self._send_timeout is not None and socket_tuned(request) == int(self._send_timeout * 1000):
            self._tuned_already = True  # and noted: prepare need not note it again
            return
        transport = request.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if _TCP_USER_TIMEOUT is None or self._send_timeout is None or sock is None:
            return
        family = sock.family
        if family not in (socket.AF_INET, socket.AF_INET6):
            return
        # One socket object for both options: uvloop's stand-in builds and detaches one per call.
        real = socket.socket(family, sock.type, sock.proto, sock.fileno())
        try:
            real.setsockopt(socket.IPPROTO_TCP, _TCP_USER_TIMEOUT, int(self._send_timeout * 1000))
            # A fixed kernel send buffer: autotuned, it grows to megabytes (tcp_wmem), so a client
            # that stops reading pins that much kernel memory and costs the gateway the CPU of
            # relaying megabytes nobody reads before backpressure reaches the upstream. A token
            # stream needs a few KiB per round trip.
            real.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        finally:
            real.detach()  # the descriptor stays the transport's

    def _restore_tcp_user_timeout(self) -> None:
        pass

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        """Start the response: headers go out with the first event, at the latest one loop turn later.

        aiohttp-sse would send the headers in a write of their own. Here they share the first
        event's write when it follows at once (the usual case: the upstream's first event came with
        its headers). From then on the client's write buffer is held small (see WRITE_BUFFER_HIGH).
        """
        if self.prepared:
            # aiohttp-sse's answer for a prepared response (aiohttp asks again as the handler returns).
            if request.protocol.transport is None:
                raise asyncio.CancelledError()
            return self._payload_writer
        self._set_tcp_user_timeout(request)
        self._request = request
        close_at_the_end_for_http_1_0(self, request)
        writer = await web.StreamResponse.prepare(self, request)
        self.enable_chunked_encoding()
        transport = request.transport
        if transport is None or transport.is_closing():
            # What the header write would have raised, had it not waited for the first event.
            raise ClientConnectionResetError("Cannot write to closing transport")
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH, low=WRITE_BUFFER_LOW)
        # aiohttp's header-read timer, armed when the connection opened, would sit on the loop for
        # the whole stream (a timer handle per stream, ~550 bytes): the request is read, so drop it.
        # aiohttp arms its keep-alive timer again once the response ends.
        request.protocol.keep_alive(True)
        release_connection_buffers(request)  # two empty deques, ~1.5 KiB per live stream
        if self._send_timeout is not None and not self._tuned_already:
            note_socket_tuned(request, int(self._send_timeout * 1000))
        self._beat = self._timers.later(self._ping_interval, self)
        self._timers.loop.call_soon(self._flush_headers)
        return writer

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Write, then wait while the client's buffer is over its mark (aiohttp alone checks every 64 KiB)."""
        if self._preamble:
            data, self._preamble = self._preamble + data, b""
        await super().write(data)
        writer = self._payload_writer
        if writer is not None:
            await writer.drain()  # returns at once unless the transport paused writing

    def send_now(self, data: bytes) -> bool:
        """Write without waiting; False once the client's buffer is over its mark (then `await drain()`).

        The relay's push path calls this from the upstream connection's data callback, where
        nothing can be awaited. aiohttp's writer awaits nothing for an uncompressed body written
        with `drain=False`: one step of its coroutine is the whole write.
        """
        if self._eof_sent:
            raise RuntimeError("Cannot call write() after write_eof()")
        writer = self._payload_writer
        if writer is None:
            raise RuntimeError("Cannot call write() before prepare()")
        if self._preamble:
            data, self._preamble = self._preamble + data, b""
        stream_writer: StreamWriter = writer  # type: ignore[assignment]  # not `cast`: a call per event
        if (
            data
            and stream_writer.chunked
            and stream_writer._headers_buf is None
            and stream_writer._compress is None
            and stream_writer._on_chunk_sent is None
            and stream_writer.on_body_write is None
            and stream_writer.length is None
        ):
            # What aiohttp's write does for a chunk of a started, uncompressed, chunked body, without
            # building and stepping its coroutine: on every event of a paced stream.
            stream_writer._write(b"%x\r\n%b\r\n" % (len(data), data))
            return not stream_writer.protocol.writing_paused
        step = stream_writer.write(data, drain=False)
        try:
            step.send(None)
        except StopIteration:
            return not stream_writer.protocol.writing_paused
        step.close()
        raise RuntimeError("The response writer waited inside a write: is the stream compressed?")

    async def wait_for_room(self) -> None:
        """Wait while the client's buffer is over its mark."""
        writer = self._payload_writer
        if writer is not None:
            await writer.drain()

    @property
    def client_gone(self) -> bool:
        """True once the client's connection is closing or lost."""
        writer = self._payload_writer
        transport = writer.transport if writer is not None else None
        return transport is None or transport.is_closing()

    def on_client_gone(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` the moment the client's leaving is read; return what unregisters it (see client_gone.py)."""
        request = self._request
        return _nothing if request is None else watch_client_gone(request, callback)

    def stop_heartbeat(self) -> None:
        """Stop the heartbeat now: a stream that errored or was cancelled never reaches `finish()`."""
        self._beats_stopped = True
        if self._beat is not None:
            self._timers.cancel(self._beat)
            self._beat = None
        if self._ping_task is not None:
            self._ping_task.cancel()

    def abort(self) -> None:
        """Drop the connection at once: the client stopped reading."""
        self._abort_transport()

    async def write_last(self, data: bytes) -> None:
        """Write the stream's last bytes and end the body, in one write (one send, not three)."""
        self.stop_heartbeat()
        if self._eof_sent:
            return
        if self._preamble:
            data, self._preamble = self._preamble + data, b""
        # What `write_eof` does, without its coroutine in between: on every stream.
        await web.StreamResponse.write_eof(self, data)

    async def write_eof(self, data: bytes = b"") -> None:
        """End the body, after the preamble if nothing was written yet."""
        if self._eof_sent:
            return  # ended already (`write_last`): aiohttp asks again as the handler returns
        if self._preamble:
            data, self._preamble = self._preamble + data, b""
        # Not aiohttp-sse's write_eof: all it adds is restoring a TCP_USER_TIMEOUT this class never saves.
        await web.StreamResponse.write_eof(self, data)

    @property
    def finished(self) -> bool:
        """True once the body ended with no heartbeat waiting for room (`write_last`): nothing left to `finish()`."""
        return self._eof_sent and self._ping_task is None

    async def finish(self) -> None:
        """Stop the heartbeat and end the body, tolerating a client that has already gone."""
        if self.finished:
            return
        self.stop_heartbeat()
        if self._ping_task is not None:
            await self.wait()  # a heartbeat that was waiting for room, cancelled just now
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await self.write_eof()


def _nothing() -> None:
    pass
