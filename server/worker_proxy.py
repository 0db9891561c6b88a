"""The worker proxy: forward a browser stream's requests to the worker that owns it (`--workers`).

A detached browser stream lives in the memory of the worker that started it, while the kernel
spreads new connections over all workers (SO_REUSEPORT). So each worker also listens on a Unix
socket of its own, every stream id it creates names it (`w<index>_<token>`), and a request for
another worker's stream is forwarded, bytes as they come, to that worker's socket. A client that
leaves closes the forwarded request, so the owner sees the disconnect as if it were direct.
A single process has no peers and creates plain ids.
"""

from __future__ import annotations

import asyncio
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import structlog
from aiohttp import web

from .access import RequestRecord
from .lean_connection import limit_unread_responses
from .sse import close_at_the_end_for_http_1_0

log = structlog.get_logger("sluice.worker_proxy")

_OWNER = re.compile(r"w([0-9]{1,4})_")
# The longest path a Unix socket may have, in bytes: sun_path's size less its NUL (108 on Linux, 104 elsewhere).
SOCKET_PATH_LIMIT = 107 if sys.platform.startswith("linux") else 103
# Headers of a forwarded answer that the client must see as the owner sent them.
_PASSED_ON = ("Content-Type", "Cache-Control", "X-Accel-Buffering", "Retry-After")


@dataclass(frozen=True, slots=True)
class WorkerIdentity:
    """Which worker this process is, how many there are, and where every worker's Unix socket lives."""

    index: int
    peer_dir: Path
    workers: int

    def socket_path(self, index: int | None = None) -> Path:
        """The Unix socket of worker `index` (this worker's by default)."""
        return self.peer_dir / f"worker-{self.index if index is None else index}.sock"

    def stream_id_prefix(self) -> str:
        """What starts the id of every stream this worker creates."""
        return f"w{self.index}_"


class WorkerProxy:
    """Connections to the other workers, one pooled session each, opened on first use."""

    def __init__(self, identity: WorkerIdentity) -> None:
        self.identity = identity
        self._sessions: dict[int, aiohttp.ClientSession] = {}

    def owner_elsewhere(self, stream_id: str) -> int | None:
        """The index of the worker that owns `stream_id`, if not this one."""
        match = _OWNER.match(stream_id)
        if match is None:
            return None
        owner = int(match.group(1))
        # An index no worker has is an unknown stream here, answered as one: a client could
        # otherwise make this worker open a session to each of 10,000 sockets that never exist.
        return None if owner == self.identity.index or owner >= self.identity.workers else owner

    def session(self, index: int) -> aiohttp.ClientSession:
        """The pooled session to worker `index`."""
        session = self._sessions.get(index)
        if session is None:
            connector = aiohttp.UnixConnector(path=str(self.identity.socket_path(index)))
            session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))
            self._sessions[index] = session
        return session

    async def close(self) -> None:
        """Close every session."""
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()


async def forward_to_owner(
    request: web.Request,
    proxy: WorkerProxy,
    owner: int,
    request_id: str,
    *,
    record: RequestRecord,
    client: str | None,
    send_timeout: float,
) -> web.StreamResponse:
    """Answer `request` with what worker `owner` answers, streamed through as it arrives.

    The owner logs and counts the request, with `client` as its client (`record` notes that it was
    forwarded, so this worker does not log it again). A worker that cannot be reached took its
    streams with it (it died and was replaced): that is an unknown stream, 204, which tells
    EventSource to stop reconnecting; this worker logs that one.
    """
    # The owner authenticates the request again: the key headers go along (a token is in the query).
    # Values go as text, and aiohttp's writer drops a byte that was not UTF-8 (a lone surrogate): what
    # the owner reads of them is checked before forwarding (Last-Event-ID by the route, a key by the
    # auth middleware), so a value the owner would refuse never reaches it altered into one it takes.
    forwarded = ("Last-Event-ID", "Authorization", "api-key", "x-api-key")
    headers = {name: request.headers[name] for name in forwarded if name in request.headers}
    headers["X-Request-ID"] = request_id
    if client:
        headers["X-Forwarded-For"] = client
    session = proxy.session(owner)
    try:
        answer = await session.request(request.method, f"http://worker{request.path_qs}", headers=headers)
    except aiohttp.ClientError as exc:
        log.warning("peer_unreachable", worker=owner, error=type(exc).__name__)
        return web.Response(status=204)
    record.forwarded_to = owner
    try:
        passed = {name: answer.headers[name] for name in _PASSED_ON if name in answer.headers}
        if answer.content_type != "text/event-stream":
            return web.Response(status=answer.status, body=await answer.read(), headers=passed)
        response = web.StreamResponse(status=answer.status, headers=passed)
        # The kernel's backstop above the relay's own send timeout, as for a stream (sse.py): at
        # 1x, as every connection starts, it could cut a stalled client before the timer says why.
        limit_unread_responses(request.transport, send_timeout * 3)
        close_at_the_end_for_http_1_0(response, request)
        await response.prepare(request)
        if await _pass_on(answer, response, send_timeout, owner):
            await response.write_eof()
        elif request.transport is not None:
            request.transport.abort()  # the client's reconnect then learns the stream's fate
        return response
    finally:
        answer.close()


async def _pass_on(
    answer: aiohttp.ClientResponse, response: web.StreamResponse, send_timeout: float, owner: int
) -> bool:
    """Copy the owner's bytes to the client; False when either side failed and the client must be cut."""
    try:
        async for piece in answer.content.iter_any():
            async with asyncio.timeout(send_timeout):
                await response.write(piece)
    except TimeoutError:
        # The client accepts nothing: drop it, as the owner drops a stalled reader.
        log.info("peer_client_stalled", worker=owner)
        return False
    except ConnectionResetError:  # the client left (aiohttp's ClientConnectionResetError is one)
        return False
    except aiohttp.ClientError as exc:
        # The owner died mid-stream: an ordinary cut for the client, not a handler failure.
        log.warning("peer_lost", worker=owner, error=type(exc).__name__)
        return False
    return True


def identity_from_args(index: int | None, peer_dir: str | None, count: int | None) -> WorkerIdentity | None:
    """The worker identity run.py was given by the supervisor, if any."""
    if index is None or peer_dir is None or count is None:
        return None
    return WorkerIdentity(index, Path(peer_dir), count)
