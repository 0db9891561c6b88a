"""Start a stream's SSE response: at once when the routing is done, or beside a routing that takes long.

The routing runs in the handler's own task. Most streams' first token arrives with the upstream's
answer, and the response starts after it, in that task: no second task, and no loop turn spent
handing the stream from one task to another. When an upstream accepted the request but its first
token is not there in the same loop turn (a reasoning model thinking), or one heartbeat interval of
routing passed (retries, Retry-After waits), a task of its own starts the response meanwhile, so
that heartbeat comments keep the client and its proxies from timing out.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable

from aiohttp import web

from .access import RequestRecord
from .guard import Outcome, StreamGuard
from .sse import SSEResponse
from .timers import Entry


class ResponseStart:
    """The response of one stream, started early (beside the routing) or late (after it)."""

    def __init__(
        self,
        request: web.Request,
        record: RequestRecord,
        guard: StreamGuard,
        make: Callable[[], SSEResponse],
        limit: float,
    ) -> None:
        self._request = request
        self._record = record
        self._guard = guard
        self._make = make
        self._loop = guard.loop
        self._routing = True
        # An entry of the stream's Timers, not a loop timer made and cancelled per stream. Timers
        # calls its owners in an empty context: the early task gets the handler's.
        self._timers = guard.timers
        self._context: contextvars.Context | None = contextvars.copy_context()
        self._timer: Entry | None = self._timers.later(limit, self)
        self._early: asyncio.Task[SSEResponse] | None = None
        self._response: SSEResponse | None = None

    @property
    def begun(self) -> bool:
        """True once the response started beside the routing: a failure is then an error event."""
        return self._early is not None

    def soon(self) -> None:
        """An upstream accepted the request: start the response unless the routing ends in this loop turn."""
        self._loop.call_soon(self._begin)

    def routed(self) -> None:
        """The routing is over (a stream, or a failure): nothing starts early from now on."""
        self._routing = False
        self._context = None
        if self._timer is not None:
            self._timers.cancel(self._timer)
            self._timer = None

    def response(self) -> Awaitable[SSEResponse]:
        """The started response, to await: the early one once its headers are ready, else one started now."""
        self.routed()
        if self._early is None and self._response is None:
            # The usual stream: its response starts now, `start_response` awaited by the caller with
            # no coroutine of this method's in between (each costs its frame and a step per stream).
            self._response = self._make()
            return start_response(self._request, self._record, self._guard, self._response)
        return self._early_response()

    async def _early_response(self) -> SSEResponse:
        if self._early is not None:
            self._response = await self._early
        assert self._response is not None
        return self._response

    def started(self) -> SSEResponse | None:
        """The response, if one started (early or late; a late one as soon as its start is under way)."""
        early = self._early
        finished = early is not None and early.done() and not early.cancelled()
        if self._response is None and early is not None and finished and early.exception() is None:
            self._response = early.result()
        return self._response

    def close(self) -> None:
        """Stop the timer, and an early start still under way."""
        self.routed()
        if self._early is not None and not self._early.done():
            self._early.cancel()

    def timer_fired(self) -> None:
        """One heartbeat interval of routing passed (Timers calls this): start the response now."""
        self._timer = None
        self._begin()

    def _begin(self) -> None:
        if self._routing and self._early is None:
            self._early = self._loop.create_task(
                start_response(self._request, self._record, self._guard, self._make()), context=self._context
            )


async def start_response(
    request: web.Request, record: RequestRecord, guard: StreamGuard, response: SSEResponse
) -> SSEResponse:
    """`response`, prepared for the request, its stalls watched by `guard`.

    A client gone by the time the headers go ends the handler as any disconnect does.
    """
    try:
        await response.prepare(request)
    except ConnectionResetError:  # aiohttp's ClientConnectionResetError is one
        # The peer's reset reached the transport before aiohttp cancelled the handler.
        record.outcome = Outcome.CLIENT_DISCONNECTED
        raise asyncio.CancelledError from None
    record.response_status = response.status
    guard.set_send_timeout_callback(response.abort)
    return response
