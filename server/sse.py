"""The SSE response every stream is written to: aiohttp-sse's, tuned for relaying.

Events arrive already encoded (see dialects.py) and are written with `write()`, skipping the
per-event string building of `send()`. aiohttp-sse supplies the headers, refuses compression,
sets TCP_USER_TIMEOUT so the kernel drops a peer that stops acknowledging, and runs the
heartbeat task.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from aiohttp_sse import EventSourceResponse

HEARTBEAT = b": keep-alive\n\n"


class SSEResponse(EventSourceResponse):
    """A text/event-stream response that never buffers, never compresses and keeps itself alive."""

    def __init__(
        self,
        *,
        heartbeat_interval: float,
        send_timeout: float,
        on_heartbeat: Callable[[], None] | None = None,
        on_stalled: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(
            sep="\n",
            allow_all_methods=True,
            # aiohttp-sse also sets TCP_USER_TIMEOUT from this: at twice the limit the kernel is a
            # backstop, and the gateway's own timer ends a stalled stream first and logs why.
            send_timeout=send_timeout * 2,
            ping_interval=heartbeat_interval,
        )
        self.headers["Cache-Control"] = "no-cache, no-transform"
        self._on_heartbeat = on_heartbeat
        self._on_stalled = on_stalled
        self._ping_send_timeout = send_timeout

    async def _ping(self) -> None:
        # aiohttp-sse's ping loop, with a comment the OpenAI SDKs' parsers skip, counted for metrics.
        while True:
            await asyncio.sleep(self._ping_interval)
            try:
                async with asyncio.timeout(self._ping_send_timeout):
                    await self.write(HEARTBEAT)
            except TimeoutError:
                # The client accepts nothing: let the stream's owner end it (and log why).
                if self._on_stalled is not None:
                    self._on_stalled()
                else:
                    self._abort_transport()
                break
            except (ConnectionResetError, RuntimeError):
                break
            if self._on_heartbeat is not None:
                self._on_heartbeat()

    def stop_heartbeat(self) -> None:
        """Stop the heartbeat now: a stream that errored or was cancelled never reaches `finish()`."""
        if self._ping_task is not None:
            self._ping_task.cancel()

    def abort(self) -> None:
        """Drop the connection at once: the client stopped reading."""
        self._abort_transport()

    async def finish(self) -> None:
        """Stop the heartbeat and end the body, tolerating a client that has already gone."""
        if self._ping_task is not None:
            self.stop_streaming()
            await self.wait()
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await self.write_eof()
