"""A TCP proxy in front of a server that can drop one connection mid-response, or reset them all.

Chromium's offline emulation leaves an open EventSource connection alone, so the tests drop it
here instead, as a failing network or load balancer would: armed with a byte pattern, the proxy
forwards a response up to the end of that pattern, then closes both sides of that connection.
The browser sees the response end mid-stream; the gateway sees its reader leave. In front of
Redis, `reset_all()` resets the connections it carries, as a middlebox dropping idle ones does
(a real Redis closes its connections; it resets one only when it dies with bytes unread).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field

READ_BYTES = 65536


@dataclass(eq=False)
class _Connection:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def close(self) -> None:
        self.client.close()  # the bytes already forwarded still reach the browser, then EOF
        self.server.transport.abort()


class CuttingProxy:
    """Forward 127.0.0.1:<port> to the gateway; `cut_after(pattern)` arms a one-shot drop."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._pattern: bytes | None = None
        self.cut = asyncio.Event()
        self.url = ""
        self._open = asyncio.Event()
        self._open.set()
        self._hold_after_cut = False

    async def start(self) -> None:
        """Listen on a free loopback port; `url` is then the proxy's base URL."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def cut_after(self, pattern: bytes, *, then_hold: bool = False) -> None:
        """Drop the next response carrying `pattern`, right after forwarding its last byte.

        `then_hold`: from the cut on, hold new connections (see `hold`) until `release()`.
        """
        self._pattern = pattern
        self._hold_after_cut = then_hold
        self.cut.clear()

    def hold(self) -> None:
        """Accept new connections but forward nothing until `release()`: a reconnect that hangs."""
        self._open.clear()

    def release(self) -> None:
        """Let held and new connections through."""
        self._open.set()

    def reset_all(self) -> None:
        """Reset every connection now: the client's side gets an RST, not an orderly close."""
        for connection in list(self._connections):
            sock = connection.client.get_extra_info("socket")
            # A zero linger makes closing the socket send RST.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            connection.client.transport.abort()
            connection.server.transport.abort()

    async def close(self) -> None:
        self._open.set()
        if self._server is not None:
            self._server.close()
        tasks = [task for connection in self._connections for task in connection.tasks]
        for connection in list(self._connections):
            connection.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        await self._open.wait()
        server_reader, server_writer = await asyncio.open_connection(*self._target)
        connection = _Connection(client_writer, server_writer)
        self._connections.add(connection)
        connection.tasks = [
            asyncio.create_task(self._pump(client_reader, server_writer, connection, downstream=False)),
            asyncio.create_task(self._pump(server_reader, client_writer, connection, downstream=True)),
        ]

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: _Connection, *, downstream: bool
    ) -> None:
        tail = b""  # the end of the previous read, so a pattern split across two reads is found
        try:
            while data := await reader.read(READ_BYTES):
                pattern = self._pattern if downstream else None
                if pattern is not None:
                    window = tail + data
                    at = window.find(pattern)
                    if at >= 0:
                        writer.write(data[: at + len(pattern) - len(tail)])
                        await writer.drain()
                        self._pattern = None
                        if self._hold_after_cut:
                            self.hold()
                        connection.close()
                        self.cut.set()
                        return
                    tail = window[-(len(pattern) - 1) :] if len(pattern) > 1 else b""
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(ConnectionError, OSError, RuntimeError):
                writer.close()
            self._connections.discard(connection)
