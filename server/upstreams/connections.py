"""Keep-alive connections to the upstreams: one pool per origin, one limit across them all.

A connection goes back to its pool once its response was read to the end; an idle one is
closed after `idle_seconds`, or dropped at once when the upstream closes it. `max_connections`
bounds the connections carrying a request at once, as aiohttp's TCPConnector `limit` did
(0: no bound).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import socket
import ssl
from urllib.parse import urlsplit

from ..timers import Entry, Timers
from .http1 import Http1Connection, read_buffer

IDLE_SECONDS = 15.0  # aiohttp's keep-alive default; upstream servers commonly keep 60 s or more
DNS_SECONDS = 10.0  # how long an origin's addresses are kept, as aiohttp's connector kept them


class OriginPool:
    """The connections to one scheme, host and port."""

    def __init__(self, connections: Connections, host: str, port: int, tls: bool) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self._connections = connections
        # Each idle connection's expiry: an entry of the shared Timers, not a loop timer (a request
        # took one connection and gave it back: a timer made and cancelled per request).
        self._idle: dict[Http1Connection, Entry] = {}
        self._open: set[Http1Connection] = set()
        self._addresses: list[tuple[str, int]] = []
        self._resolved_until = 0.0
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(host)
            self._addresses, self._resolved_until = [(host, port)], math.inf  # an address already
        self._lookup: asyncio.Future[list[tuple[str, int]]] | None = None

    async def acquire(self, *, fresh: bool = False) -> Http1Connection:
        """A connection to carry one request: the most recently idle one, else (or if `fresh`) a new one.

        Raises OSError (ssl.SSLError is one) or TimeoutError when a new one cannot be opened.
        """
        slots = self._connections.slots
        if slots is not None:
            await slots.acquire()
        try:
            while self._idle and not fresh:
                connection, expiry = self._idle.popitem()
                self._connections.timers.cancel(expiry)
                if connection.transport is not None and not connection.transport.is_closing():
                    return connection
            return await self._open_one()
        except BaseException:
            if slots is not None:
                slots.release()
            raise

    def take_idle(self) -> Http1Connection | None:
        """The most recently idle connection, when one is there and no bound on connections applies; else None.

        What `acquire` would return at once, without its coroutine: the common case of a request.
        """
        if self._connections.slots is not None:
            return None  # the bound's semaphore is awaited: `acquire`
        idle = self._idle
        while idle:
            connection, expiry = idle.popitem()
            self._connections.timers.cancel(expiry)
            if connection.transport is not None and not connection.transport.is_closing():
                return connection
        return None

    def release(self, connection: Http1Connection) -> None:
        """Take back `connection` after its request: keep it for the next one if it can be reused, else close it."""
        if self._connections.slots is not None:
            self._connections.slots.release()
        if connection.reusable and not self._connections.closed:
            connection.idle()
            self._idle[connection] = self._connections.timers.later(self._connections.idle_seconds, connection)
        else:
            connection.close()

    def close(self) -> None:
        """Close every connection of this pool, idle or carrying a request."""
        timers = self._connections.timers
        for expiry in self._idle.values():
            timers.cancel(expiry)
        self._idle.clear()
        for connection in list(self._open):
            connection.close()

    async def _open_one(self) -> Http1Connection:
        loop = asyncio.get_running_loop()
        context = self._connections.ssl_context if self.tls else None
        async with asyncio.timeout(self._connections.connect_timeout):
            addresses = await self._resolve()
            for index, (address, port) in enumerate(addresses):
                try:
                    _, connection = await loop.create_connection(
                        lambda: Http1Connection(self._lost, self._connections.read_buffer),
                        address,
                        port,
                        ssl=context,
                        server_hostname=self.host if context is not None else None,
                    )
                    break
                except OSError:
                    if index == len(addresses) - 1:
                        raise  # each address refused: the last one's error names the failure
        # TCP_NODELAY is on already: uvloop and asyncio set it on every TCP transport they make.
        # Asking for the socket again cost a system call and a socket object kept per stream.
        self._open.add(connection)
        return connection

    async def _resolve(self) -> list[tuple[str, int]]:
        """The origin's addresses, looked up at most once per DNS_SECONDS, once for a crowd of new connections."""
        loop = asyncio.get_running_loop()
        if self._addresses and loop.time() < self._resolved_until:
            return self._addresses
        if self._lookup is None:
            self._lookup = asyncio.ensure_future(self._look_up())
        # Shielded: one caller's deadline must not cancel the lookup the others wait on.
        return await asyncio.shield(self._lookup)

    async def _look_up(self) -> list[tuple[str, int]]:
        loop = asyncio.get_running_loop()
        try:
            found = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        finally:
            self._lookup = None
        if not found:
            raise OSError(f"No address found for {self.host}.")
        self._addresses = [(str(info[4][0]), int(info[4][1])) for info in found]
        self._resolved_until = loop.time() + DNS_SECONDS
        return self._addresses

    def _lost(self, connection: Http1Connection) -> None:
        """The connection closed (either side): forget it."""
        self._open.discard(connection)
        expiry = self._idle.pop(connection, None)
        if expiry is not None:
            self._connections.timers.cancel(expiry)


class Connections:
    """Every upstream origin's pool, opened and closed with the application."""

    def __init__(
        self,
        *,
        max_connections: int,
        connect_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        idle_seconds: float = IDLE_SECONDS,
    ) -> None:
        self.connect_timeout = connect_timeout
        # Idle connections' expiries and the upstream requests' deadlines: one loop timer for all.
        self.timers = Timers()
        self.idle_seconds = idle_seconds
        # Verification and SNI on: the system's trust store (SSL_CERT_FILE/SSL_CERT_DIR apply).
        self.ssl_context = ssl_context or ssl.create_default_context()
        self.slots = asyncio.Semaphore(max_connections) if max_connections > 0 else None
        self.closed = False
        self.read_buffer = read_buffer()  # every connection's reads land here (see Http1Connection)
        self._pools: dict[tuple[str, int, bool], OriginPool] = {}

    def pool(self, base_url: str) -> OriginPool:
        """The pool of `base_url`'s origin (http or https, its host and port)."""
        parts = urlsplit(base_url)
        tls = parts.scheme == "https"
        host = parts.hostname or ""
        port = parts.port or (443 if tls else 80)
        key = (host, port, tls)
        found = self._pools.get(key)
        if found is None:
            found = self._pools[key] = OriginPool(self, host, port, tls)
        return found

    async def close(self) -> None:
        """Close every connection; requests still running fail."""
        self.closed = True
        for pool in self._pools.values():
            pool.close()
        self.timers.close()
        await asyncio.sleep(0)  # let the transports' close callbacks run before the loop goes
