"""Give back what aiohttp keeps per connection that a live stream no longer needs.

aiohttp gives every connection two deques that sit empty while a stream runs: the queue of
parsed requests waiting for the handler (`RequestHandler._messages`) and the request body's
buffer (`StreamReader._buffer`). An empty deque still holds its first block of 64 slots, about
0.75 KiB each: 1.5 KiB of a live paced stream's 27 (tracemalloc, 1,000 streams at 100 ms pace).
Once the body is read and the response starts, `release` swaps the queue for a list with the
same three operations aiohttp uses (append, popleft, len) and the read body's buffer for an
empty tuple (aiohttp only tests it for emptiness once the body ended). Both are aiohttp 3.14
internals: anything not found as expected is left alone, and
tests/test_sse_response.py fails if they are renamed.

The stand-in queue is also the one object of Sluice's that lives as long as the connection: it
remembers the socket options a stream set (`socket_tuned`, `note_socket_tuned`), so the
connection's later streams do not set them again (a socket object and three system calls each).

`limit_unread_responses` bounds, from the kernel, how long any response may wait for its client to
read: set once per connection, it is what frees a connection whose client stopped reading.
"""

from __future__ import annotations

import socket
from asyncio import BaseTransport
from collections import deque
from typing import Any

from aiohttp.streams import StreamReader
from aiohttp.web_request import BaseRequest

_TCP_USER_TIMEOUT: int | None = getattr(socket, "TCP_USER_TIMEOUT", None)


class MessageQueue(list[Any]):
    """aiohttp's request queue as a list: empty, it holds no block (a pipelined request is rare).

    `tuned`: what the connection's socket options were set for (see `note_socket_tuned`), 0 if not yet.
    """

    __slots__ = ("tuned",)

    def __init__(self, items: Any = ()) -> None:
        super().__init__(items)
        self.tuned = 0

    def popleft(self) -> Any:
        """The oldest request, as `deque.popleft`."""
        return self.pop(0)


def release(request: BaseRequest) -> None:
    """Swap the connection's empty request queue and the read body's buffer for lighter stand-ins."""
    protocol = request.protocol
    messages = getattr(protocol, "_messages", None)
    if type(messages) is deque:
        protocol._messages = MessageQueue(messages)  # type: ignore[assignment]
    content = request.content
    # Only a body read to its end: aiohttp's shared empty payload (no body) has no buffer at all.
    if type(content) is StreamReader and content.is_eof() and type(content._buffer) is deque:
        content._buffer = ()  # type: ignore[assignment]


def socket_tuned(request: BaseRequest) -> int:
    """What `note_socket_tuned` recorded for the request's connection; 0 when nothing was (or it cannot tell)."""
    messages = getattr(request.protocol, "_messages", None)
    return messages.tuned if type(messages) is MessageQueue else 0


def note_socket_tuned(request: BaseRequest, value: int) -> None:
    """Remember, for the connection's later requests, that its socket options were set for `value`.

    Only once `release` has put the stand-in queue in place; before that (or on an aiohttp whose
    queue is not found), nothing is remembered and the options are set again next time.
    """
    messages = getattr(request.protocol, "_messages", None)
    if type(messages) is MessageQueue:
        messages.tuned = value


def limit_unread_responses(transport: BaseTransport | None, send_timeout: float) -> None:
    """Have the kernel close the connection once its client has taken no byte for `send_timeout` seconds.

    Call once per connection, at its first request. aiohttp bounds nothing while a response is
    written: a client that sends requests and never reads held its connection busy for good,
    beyond the cap's reach (it closes only idle ones), so as many such clients as the cap locked
    everyone out with 503. TCP_USER_TIMEOUT has the kernel drop a connection whose sent data goes
    unacknowledged for that long, and one whose client keeps its window shut (it stopped reading)
    on the Linux kernels that count zero-window probes against it, which
    tests/test_stuck_writers_process.py checks on the running one. One system call per connection
    and no timer per request; the transport then fails, aiohttp cancels the handler, and the cap
    counts the connection no more. A stream's own send timeout (sse.py) raises it on its
    connection, so that the gateway's timer ends the stream first. Nothing is done where the
    option is missing (not Linux) or the socket is not TCP.
    """
    sock = transport.get_extra_info("socket") if transport is not None else None
    if _TCP_USER_TIMEOUT is None or sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_USER_TIMEOUT, int(send_timeout * 1000))
    except OSError:  # the connection is already gone: nothing to bound
        return
