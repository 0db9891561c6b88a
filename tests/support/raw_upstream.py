"""A loopback HTTP/1.1 server whose answers a test writes as raw bytes, to drive the upstream client."""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass


def token(n: int | str) -> bytes:
    """One SSE event carrying the text `t<n>`."""
    text = n if isinstance(n, str) else f"t{n}"
    return b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]}).encode() + b"\n\n"


FINISH = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    """`data` as one HTTP chunk."""
    return b"%x\r\n" % len(data) + data + b"\r\n"


def json_reply(body: bytes, status: int = 200) -> bytes:
    """A whole keep-alive reply with a Content-Length."""
    return b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (status, len(body)) + body


@dataclass
class Exchange:
    """One request the server read, and the connection to answer it on."""

    head: bytes
    body: bytes
    connection: int  # which connection carried it, counted from 1
    writer: asyncio.StreamWriter

    def write(self, data: bytes) -> None:
        """Send `data` on this request's connection."""
        self.writer.write(data)

    def close(self) -> None:
        """Close this request's connection."""
        self.writer.close()


class RawUpstream:
    """Accepts connections and puts each request it reads on `requests`; answers nothing by itself."""

    def __init__(self) -> None:
        self.requests: asyncio.Queue[Exchange] = asyncio.Queue()
        self.closed: asyncio.Queue[int] = asyncio.Queue()  # connections the client closed, by number
        self.connections = 0
        self.url = ""
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self, ssl_context: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> None:
        """Listen on a free loopback port; `url` is then the base URL (with /v1)."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ssl_context)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"{'https' if ssl_context else 'http'}://{host}:{port}/v1"

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
            for writer in self._writers:
                writer.close()
            await self._server.wait_closed()

    async def next(self, seconds: float = 10) -> Exchange:
        """The next request, within a bound far from any real wait."""
        async with asyncio.timeout(seconds):
            return await self.requests.get()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        number = self.connections
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                self.requests.put_nowait(Exchange(head, body, number, writer))
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            self.closed.put_nowait(number)
            writer.close()
