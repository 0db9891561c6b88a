"""How many client connections this process holds, and how many it may.

aiohttp keeps the open connections on its `Server`, which `web.run_app` does not hand out; every
request's protocol knows it, so the count is read there. Idle connections count too: they are
what a connection flood is made of (each is cut after `header_timeout`, see run.py).
"""

from __future__ import annotations

import resource
from collections.abc import Sized
from typing import cast

from aiohttp import web

from .settings import ConnectionSettings

# Without a configured cap: at most this many, and at least this many.
MOST_CONNECTIONS = 10_000
FEWEST_CONNECTIONS = 64


def connection_limit(settings: ConnectionSettings) -> int:
    """The configured cap, or half the open-file limit: a stream may hold an upstream socket too."""
    if settings.max_connections:
        return settings.max_connections
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MOST_CONNECTIONS
    return max(FEWEST_CONNECTIONS, min(MOST_CONNECTIONS, soft // 2))


def open_connections(request: web.Request) -> int:
    """Client connections open in this process now, the request's own included."""
    manager = getattr(request.protocol, "_manager", None)  # aiohttp's Server; no public accessor
    # Its dict, not its `connections` property: that copies every open connection into a list,
    # on every request (1,000 entries with 1,000 streams open).
    connections: Sized | None = getattr(manager, "_connections", None)
    if connections is None:  # an aiohttp that renamed it: the public copy, slower but never 0
        connections = cast(Sized, getattr(manager, "connections", ()))
    return len(connections)
