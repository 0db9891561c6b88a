"""The SSE response sets up what aiohttp-sse's own __init__ would, without running it (server/sse.py)."""

from __future__ import annotations

from aiohttp_sse import EventSourceResponse

from server.sse import SSEResponse


def test_an_sse_response_starts_with_the_headers_and_settings_aiohttp_sse_would_give_it() -> None:
    """Same headers in the same order (with Sluice's Cache-Control), and every attribute aiohttp-sse sets.

    Catches: a header, its order or an attribute of aiohttp-sse's missed or changed (server/sse.py,
    `_HEADERS` and `SSEResponse.__init__`), also after an upgrade of aiohttp-sse adds one.
    """
    ours = SSEResponse(heartbeat_interval=7, send_timeout=2)
    theirs = EventSourceResponse(sep="\n", allow_all_methods=True, send_timeout=6, ping_interval=7)
    theirs.headers["Cache-Control"] = "no-cache, no-transform"
    assert list(ours.headers.items()) == list(theirs.headers.items())
    for name, value in vars(theirs).items():
        assert getattr(ours, name) == value, name
