"""One HTTP/1.1 connection to the bench upstream: read requests, answer them, one at a time.

A stream is a chain of timer callbacks, not a task: each token is one `transport.write` on a
TCP_NODELAY socket, so each event is flushed on its own like a provider's; the next one comes
`gap_ms` later (or at once: a burst, several events may then share a read at the receiver),
and while the transport's buffer is full (`pause_writing`) nothing is written until
`resume_writing`, as aiohttp's drain would do.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import socket
import time
from typing import cast
from urllib.parse import parse_qs, urlsplit

import orjson

from .records import Record, Records
from .replies import Frames, Plan, completion, plan_for

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
_REQUEST_ID = re.compile(rb"\r\nx-request-id:\s*([^\r\n]+)", re.IGNORECASE)
_CLOSE = re.compile(rb"\r\nconnection:\s*close", re.IGNORECASE)
STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\n"
_ids = itertools.count(1)
# Events a back-to-back stream writes before letting the other connections have the loop.
BURST = 64


def json_response(status: int, body: bytes) -> bytes:
    """A whole response with a JSON body."""
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "Error")
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


class UpstreamProtocol(asyncio.Protocol):
    """Serve requests on one connection; see the module docstring."""

    def __init__(self, records: Records) -> None:
        self._records = records
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._busy = False
        self._close_after = False
        self._paused = False
        self._stream: _Stream | None = None
        self._polls: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports have its interface
        # Like a provider: every event leaves in its own segment, at once (uvloop sets this too).
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._busy:
            self._next_request()

    def eof_received(self) -> bool | None:
        self._ended("client_aborted")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended("client_aborted")

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._stream is not None:
            self._stream.resume()

    @property
    def paused(self) -> bool:
        """True while the transport's write buffer is over its high-water mark."""
        return self._paused

    def write(self, data: bytes) -> None:
        """Send bytes on this connection."""
        assert self._transport is not None
        self._transport.write(data)

    def finished(self) -> None:
        """The current response is complete: close, or serve the next request."""
        self._busy = False
        self._stream = None
        if self._close_after and self._transport is not None:
            self._transport.close()
        elif self._buffer:
            self._next_request()

    def _ended(self, outcome: str) -> None:
        if self._stream is not None:
            self._stream.stop(outcome)
            self._stream = None

    def _next_request(self) -> None:
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = buffer[: end + 2]
        length = _CONTENT_LENGTH.search(head)
        size = int(length.group(1)) if length is not None else 0
        if len(buffer) < end + 4 + size:
            return
        body = buffer[end + 4 : end + 4 + size]
        self._buffer = buffer[end + 4 + size :]
        self._busy = True
        self._close_after = _CLOSE.search(head) is not None
        method, _, rest = head.partition(b" ")
        target = rest.partition(b" ")[0].decode()
        tag = _REQUEST_ID.search(head)
        request_id = tag.group(1).decode().strip() if tag is not None else None
        if method == b"POST" and target == "/v1/chat/completions":
            self._chat(body, request_id)
        elif method == b"GET" and target.startswith("/_sim/requests/"):
            task = self._loop.create_task(self._poll(target))
            self._polls.add(task)
            task.add_done_callback(self._polls.discard)
        else:
            self._reply(404, b'{"error":{"message":"no such route","type":"invalid_request_error"}}')

    def _reply(self, status: int, body: bytes) -> None:
        self.write(json_response(status, body))
        self.finished()

    def _chat(self, body: bytes, request_id: str | None) -> None:
        try:
            plan = plan_for(orjson.loads(body))
        except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError) as exc:
            self._reply(400, json.dumps({"error": {"message": str(exc), "type": "invalid_request_error"}}).encode())
            return
        record = self._records.open(request_id) if request_id is not None else None
        completion_id = f"chatcmpl-bench{next(_ids)}"
        if plan.stream:
            self._stream = _Stream(self, plan, Frames(completion_id, int(time.time()), plan.model, plan.include_usage))
            self._stream.record = record
            self._stream.start()
            return
        delay = (plan.ttft_ms + plan.tokens * plan.gap_ms) / 1000

        def answer() -> None:
            if record is not None:
                record.close("completed")
            self._reply(200, completion(completion_id, int(time.time()), plan))

        if delay > 0:
            self._loop.call_later(delay, answer)
        else:
            answer()

    async def _poll(self, target: str) -> None:
        url = urlsplit(target)
        request_id = url.path.rsplit("/", 1)[-1]
        timeout = float(parse_qs(url.query).get("timeout", ["5"])[0])
        record = await self._records.wait_closed(request_id, timeout)
        if self._transport is None or self._transport.is_closing():
            return
        if record is None:
            self._reply(404, json.dumps({"request_id": request_id, "timed_out": False}).encode())
        else:
            self._reply(200, json.dumps(record).encode())


class _Stream:
    """One streamed reply, driven by timer callbacks."""

    __slots__ = ("_connection", "_frames", "_next", "_plan", "_sent", "_timer", "record")

    def __init__(self, connection: UpstreamProtocol, plan: Plan, frames: Frames) -> None:
        self._connection = connection
        self._plan = plan
        self._frames = frames
        self._sent = 0
        self._timer: asyncio.Handle | None = None
        self._next = False  # a token is due but the transport is paused
        self.record: Record | None = None

    def start(self) -> None:
        """Headers and the role event now (as the simulator does), the first token after ttft_ms."""
        self._connection.write(STREAM_HEAD + self._frames.role())
        self._after(self._plan.ttft_ms)

    def resume(self) -> None:
        """The transport drained: send what was due."""
        if self._next:
            self._next = False
            self._send()

    def stop(self, outcome: str) -> None:
        """The connection went away mid-stream."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.record is not None:
            self.record.close(outcome)

    def _after(self, delay_ms: float) -> None:
        if delay_ms > 0:
            self._timer = asyncio.get_running_loop().call_later(delay_ms / 1000, self._send)
        else:
            self._send()

    def _send(self) -> None:
        self._timer = None
        connection, plan, frames = self._connection, self._plan, self._frames
        burst = 0
        while self._sent < plan.tokens:
            if connection.paused:
                self._next = True
                return
            connection.write(frames.content(self._sent))
            self._sent += 1
            burst += 1
            if plan.gap_ms > 0 and self._sent < plan.tokens:
                self._after(plan.gap_ms)
                return
            if burst == BURST and self._sent < plan.tokens:
                # A long burst takes turns with the other connections, as a server with many would.
                self._timer = asyncio.get_running_loop().call_soon(self._send)
                return
        connection.write(frames.ending(plan.tokens, plan.include_usage))
        if self.record is not None:
            self.record.close("completed")
        connection.finished()
