"""Small helpers for talking to a gateway and its simulator over real sockets."""

from __future__ import annotations

import itertools
import os
from typing import Any

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
