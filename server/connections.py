"""How many client connections this process holds, and how many it may.

aiohttp keeps the open connections on its `Server`, which `web.run_app` does not hand out; every
request's protocol knows it, so the count is read there. Idle connections count too: they are
what a connection flood is made of (each is cut after `header_timeout`, see run.py).
"""

from __future__ import annotations

import fcntl
import os
import resource
import sys
import termios
from collections.abc import Sized
from typing import Any, cast

from aiohttp import web

from .http_protocol import LingeringProtocol
from .settings import ConnectionSettings

# Without a configured cap: at most this many, and at least this many.
MOST_CONNECTIONS = 10_000
FEWEST_CONNECTIONS = 64
# Descriptors beyond two per connection: listening sockets, Redis, logs, the worker socket.
SPARE_DESCRIPTORS = 256


def raise_open_file_limit() -> int:
    """Raise this process's open-file soft limit to its hard limit; the soft limit now.

    Linux's usual soft limit (1,024, systemd's default) would cap a gateway at 512 connections by
    default, well under `server.max_live_streams`; the hard limit is what the operator granted
    (524,288 under systemd, 1,048,576 in Docker). Go's runtime and nginx's `worker_rlimit_nofile`
    do the same. Nothing here uses `select()`, the one call that breaks above descriptor 1,023.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # a hard limit above the kernel's nr_open: keep the soft one
            return soft
        return hard
    return soft


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


def closing_connections(request: web.Request) -> int:
    """Connections closed, or to close after their answer, that aiohttp still counts.

    An earlier request over the cap closed them for room, or was refused and closes its own. Each
    leaves aiohttp's count only when its close is done, a loop turn or more later: counted, every
    other request of a burst over the cap found no room and was refused too. Only read over the
    cap: it walks every connection.
    """
    manager = getattr(request.protocol, "_manager", None)  # aiohttp's Server; no public accessor
    connections: dict[Any, Any] = getattr(manager, "_connections", None) or {}
    return sum(1 for handler in connections if _closing(handler))


def _closing(handler: Any) -> bool:
    """Whether `handler`'s connection is closed, or closes once its answer is out: room already made.

    Never closed for room again, or counted as freed twice: a refused request whose body is left
    unread lingers (as good as idle) and would otherwise be freed a second time by the next request
    over the cap, each refusal letting one more connection past it.
    """
    # `_close`: set by `close()`, aiohttp's "close once the answer is out" (no public accessor).
    return handler.transport is None or bool(getattr(handler, "_close", False))


def close_idle_connections(request: web.Request, count: int) -> int:
    """Close up to `count` of the longest-open connections that wait for a request; how many were.

    A connection waits for a request between keep-alive requests, and from its connect until its
    first request's headers are in: a flood of connections that send nothing (or half a request)
    is made of these. One that answered without reading its request's body and lingers before it
    closes (`http_protocol.LingeringProtocol`) is as good as idle. aiohttp closes each after
    `header_timeout` anyway (its keep-alive check, whose test of idleness this is); closing the
    longest-open ones now, when a request arrives over the cap, serves that request instead of
    refusing it, as nginx reuses its keep-alive connections when it runs out. When those are too
    few, connections whose client stopped reading its answers go next (`_close_unread`); the kernel
    would drop each only `stream.send_timeout` after its client last took a byte
    (`lean_connection.limit_unread_responses`). Every other connection with a request in progress,
    `request`'s own included, is left alone.
    """
    manager = getattr(request.protocol, "_manager", None)  # aiohttp's Server; no public accessor
    connections: dict[Any, Any] | None = getattr(manager, "_connections", None)
    if not connections or count <= 0:
        return 0
    idle = []
    for handler in connections:  # in the order they connected
        # aiohttp's handler awaits `_waiter` only while no request is in progress on the connection;
        # a lingering one only discards a body it answered without, before it closes anyway.
        if _closing(handler):
            continue
        waiter = getattr(handler, "_waiter", None)
        waiting = waiter is not None and not waiter.done()
        if type(handler) is LingeringProtocol or (waiting and not _request_arrived(handler)):
            idle.append(handler)
            if len(idle) == count:
                break
    for handler in idle:
        handler.force_close()  # what aiohttp's keep-alive check does to an idle connection
    return len(idle) + _close_unread(request, connections, count - len(idle))


def _request_arrived(handler: Any) -> bool:
    """Whether bytes the loop has not read yet wait on `handler`'s socket: a request on its way in.

    A connection accepted in the loop turn that runs another's request over the cap has not had
    its bytes read yet, so it looks idle; closing it would reset a request the kernel already holds.
    """
    transport = handler.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return False
    try:
        waiting = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return False
    return int.from_bytes(waiting, sys.byteorder) > 0


def _close_unread(request: web.Request, connections: dict[Any, Any], count: int) -> int:
    """Abort up to `count` of the longest-open connections whose client stopped reading; how many were.

    Their answers wait in full buffers (the transport paused its writing): a client that pipelines
    requests it never reads held the cap until the kernel dropped each connection, and reopened
    them as fast, keeping everyone else out. A stream whose reader stalled is lost with them, as
    it would be at `stream.send_timeout`. Aborted, not closed: a close would wait for the client to
    read what is queued.
    """
    if count <= 0:
        return 0
    own = request.protocol
    unread = [h for h in connections if h is not own and getattr(h, "writing_paused", False) and not _closing(h)]
    del unread[count:]
    for handler in unread:
        transport = handler.transport
        if transport is not None:
            transport.abort()
        handler.force_close()
    return len(unread)


def reserve_descriptors(connections: int) -> int:
    """Grow this process's descriptor table now to hold `connections` streams; the size reserved.

    Linux doubles a process's descriptor table when a new descriptor does not fit (at 64, 128,
    256, ... open), and in a process with threads (uvloop's resolver pool is one) each doubling
    waits for an RCU grace period inside `accept` or `socket`: the whole loop stops for 5-30 ms,
    at 121, 249 and 505 open streams (bench/ streams-1k: every request that arrived then had its
    first token that much later, the TTFT tail). Growing it once at start-up, to two descriptors a
    connection (client and upstream) and some spare, within the open-file limit, moves that wait
    out of serving. The table is never shrunk; it costs the kernel 8 bytes a slot (160 KiB for
    10,000 connections), not this process's memory. Returns 0 where it could not be done.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * connections + SPARE_DESCRIPTORS
    size = wanted if soft == resource.RLIM_INFINITY else min(wanted, soft)
    highest = size - 1
    if _is_open(highest):
        return size  # already that large, and never reuse a descriptor someone holds
    try:
        probe = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        os.dup2(probe, highest, inheritable=False)  # only the number matters: the table grows to hold it
        os.close(highest)
    except OSError:
        return 0  # a platform that refuses: serving works as before, with the doublings on the way
    finally:
        os.close(probe)
    return size


def _is_open(descriptor: int) -> bool:
    try:
        os.fstat(descriptor)
    except OSError:
        return False
    return True
