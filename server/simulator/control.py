"""The `/_sim/*` routes tests use to inspect and reset the simulator."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from .errors import error_response
from .keys import STATS_KEY
from .stats import StreamRecord, Until

MAX_WAIT_S = 300.0


async def get_stats(request: web.Request) -> web.Response:
    """GET /_sim/stats: counters and recent records."""
    return _json(request.app[STATS_KEY].snapshot())


async def wait_for_request(request: web.Request) -> web.Response:
    """GET /_sim/requests/{request_id}?until=opened|paused|closed&timeout=5.

    Long-polls until the request reaches the state (waiting for it to arrive
    first if needed). 404 when it never arrived.
    """
    request_id = request.match_info["request_id"]
    try:
        until = Until(request.query.get("until", Until.CLOSED))
        timeout = float(request.query.get("timeout", "5"))
    except ValueError:
        return error_response(400, "until must be opened|paused|closed, timeout seconds")
    if not 0 <= timeout <= MAX_WAIT_S:
        return error_response(400, f"timeout must be between 0 and {MAX_WAIT_S}")
    stats = request.app[STATS_KEY]
    record: StreamRecord | None
    try:
        async with asyncio.timeout(timeout):
            record = await stats.wait(request_id, until)
        timed_out = False
    except TimeoutError:
        record, timed_out = stats.find(request_id), True
    if record is None:
        return _json({"request_id": request_id, "timed_out": timed_out}, status=404)
    return _json({**record.to_json(), "timed_out": timed_out})


async def get_attempts(request: web.Request) -> web.Response:
    """GET /_sim/attempts/{request_id}?timeout=5: every attempt of a request id, oldest first, with its times.

    Waits (up to `timeout` seconds) until every attempt seen so far has closed.
    """
    records = request.app[STATS_KEY].all_for(request.match_info["request_id"])
    try:
        timeout = min(float(request.query.get("timeout", "5")), MAX_WAIT_S)
    except ValueError:
        return error_response(400, "timeout must be seconds")
    timed_out = False
    try:
        async with asyncio.timeout(timeout):
            for record in records:
                await record.closed.wait()
    except TimeoutError:
        timed_out = True
    return _json({"attempts": [record.to_json() for record in records], "timed_out": timed_out})


async def reset_stats(request: web.Request) -> web.Response:
    """POST /_sim/reset: forget closed records and zero the counters."""
    request.app[STATS_KEY].reset()
    return _json({"reset": True})


def _json(payload: object, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(payload).encode(),
        status=status,
        content_type="application/json",
    )
