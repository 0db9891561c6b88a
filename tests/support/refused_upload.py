"""An upload the gateway refuses half-way, and what the client's kernel saw of its connection after.

Closed with a body's bytes still coming, a connection is reset, and whether a client sees that
reset before it read its answer is a race (it may read the gateway's FIN first). So the gateway's
side is read from the client's kernel instead: the second half of the body goes out once the whole
answer came and the gateway answered a later request on another connection (its event loop went
past this answer), so a gateway that closed at the answer reads nothing more, and the client's
kernel is reset or left with bytes unacknowledged. A gateway that reads the body to its end closes
in order, its FIN acknowledging every byte the client sent.
"""

from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
import termios
from dataclasses import dataclass

import aiohttp

TCP_CLOSE_WAIT = 8  # the peer closed (its FIN came), this side not yet: include/net/tcp_states.h


@dataclass(frozen=True)
class Closed:
    """A client's TCP connection, as its kernel sees it."""

    state: int
    error: int  # SO_ERROR: a reset that came is EPIPE or ECONNRESET
    unacknowledged: int  # bytes sent that the peer did not acknowledge (SIOCOUTQ, which is TIOCOUTQ on Linux)


# What a gateway that read the whole body and closed in order leaves.
CLOSED_IN_ORDER = Closed(state=TCP_CLOSE_WAIT, error=0, unacknowledged=0)


@dataclass(frozen=True)
class RefusedUpload:
    """What the client of a refused upload saw."""

    answer: bytes  # its head and its Content-Length body
    tail: bytes  # read after the answer, to the gateway's close: b"" unless it answered twice
    unwritten: int  # bytes the client's transport still held
    closed: Closed


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    """One answer, its head and its `Content-Length` body."""
    head_bytes = await reader.readuntil(b"\r\n\r\n")
    lengths = [line for line in head_bytes.lower().split(b"\r\n") if line.startswith(b"content-length:")]
    assert len(lengths) == 1, head_bytes
    return head_bytes + await reader.readexactly(int(lengths[0].split(b":", 1)[1]))


def closed_by_peer(writer: asyncio.StreamWriter) -> Closed:
    """The connection of `writer`, once its peer's FIN came (`read()` returned b"")."""
    sock = writer.get_extra_info("socket")
    state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    unacknowledged = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, bytes(4)))[0]
    return Closed(state, sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), unacknowledged)


async def upload_refused_half_way(url: str, head: bytes, body: bytes, within: float) -> RefusedUpload:
    """Send `head` and half of `body` to the gateway at `url`, read its answer, let it serve a GET
    /livez on another connection, send the rest and read to its close (a reset raises), within `within` s."""
    half = len(body) // 2
    port = int(url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(within):
            writer.write(head + body[:half])
            answer = await read_answer(reader)
            async with aiohttp.ClientSession() as http, http.get(url + "/livez") as r:
                assert r.status == 200
            writer.write(body[half:])  # the rest, once refused
            await writer.drain()
            tail = await reader.read()  # a reset raises here
            return RefusedUpload(answer, tail, writer.transport.get_write_buffer_size(), closed_by_peer(writer))
    finally:
        writer.close()
