"""Small helpers for talking to a gateway and its simulator over real sockets."""

from __future__ import annotations

import itertools
import json
import os
import socket
from typing import Any
from urllib.parse import urlsplit

import aiohttp

_ids = itertools.count()


def new_request_id(label: str) -> str:
    """A request id unique across the test session, readable in logs."""
    return f"t-{os.getpid()}-{next(_ids)}-{label}"


async def sim_wait(
    http: aiohttp.ClientSession, sim_url: str, request_id: str, until: str, seconds: float = 10
) -> dict[str, Any]:
    """Long-poll the simulator until the request reaches `until` (opened, paused, closed)."""
    params = {"until": until, "timeout": str(seconds)}
    async with http.get(f"{sim_url}/_sim/requests/{request_id}", params=params) as response:
        record: dict[str, Any] = await response.json()
    assert not record.get("timed_out"), f"simulator never saw {request_id} {until}: {record}"
    return record


def native_body(message: str, **extra: Any) -> dict[str, Any]:
    return {"message": message, **extra}


def openai_body(message: str, *, stream: bool = True, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": message}], "stream": stream, **extra}


ROUTES = {
    "native": ("/chat/stream", native_body),
    "openai": ("/v1/chat/completions", openai_body),
}


def open_unread_stream(url: str, path: str, body: dict[str, Any], request_id: str) -> socket.socket:
    """POST `body` to `url` + `path` from a bare socket that never reads, with a small receive buffer.

    A client that stops reading, at its purest: once the gateway's writes block, nothing on this
    side makes room again. (An aiohttp client reads into its own buffer whenever its loop runs, and
    the kernel grows its receive buffer while it does, so under load the gateway's writes go on
    taking more long after the stall began.) The caller closes it.
    """
    payload = json.dumps(body).encode()
    address = urlsplit(url)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect((address.hostname, address.port))
    client.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nX-Request-ID: {request_id}\r\n\r\n".encode()
        + payload
    )
    return client
