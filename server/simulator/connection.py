"""Connection-level misbehaviour shared by streamed and plain replies."""

from __future__ import annotations

from aiohttp import web

from .keys import RUNTIME_KEY


def cut_connection(request: web.Request) -> None:
    """Close the TCP connection mid-response.

    force_close() flushes what was already written and then closes without
    the chunked terminator, so the client sees a truncated body rather than
    a clean end. The handler must return right after; aiohttp's own
    write_eof then hits the closed transport and is ignored quietly.
    """
    request.protocol.force_close()


async def hang_until_shutdown(request: web.Request) -> None:
    """Wait until app shutdown; in practice, until the client leaves.

    A leaving client cancels the handler (handler_cancellation=True). The
    shutdown wake-up spares the server its graceful-shutdown timeout.
    """
    await request.app[RUNTIME_KEY].shutting_down.wait()
