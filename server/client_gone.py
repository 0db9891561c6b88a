"""Know the moment a streaming client leaves, before aiohttp cancels its handler.

aiohttp cancels a handler whose client left (`handler_cancellation=True`) from `connection_lost`,
and that handler's teardown closes the upstream. When a crowd leaves, uvloop runs those
cancellations and teardowns back to back, so an upstream closed only there waited for everyone
who left before. `watch` runs a callback (the relay's upstream close) the moment the client's
FIN is read, or, for a reset, inside `connection_lost` before the cancellation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import structlog
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

log = structlog.get_logger("sluice.client_gone")


def watch(request: BaseRequest, callback: Callable[[], None]) -> Callable[[], None]:
    """Call `callback` the moment the client of `request` leaves; return what unregisters it.

    Registers nothing (and returns a no-op) while the request's body is still being read.
    """
    content = request.content
    if content._waiter is not None or not content.is_eof():
        return _nothing
    hook = _ClientGone(callback)
    content._waiter = hook  # type: ignore[assignment]  # a future's stand-in (see _ClientGone)
    protocol = request.protocol
    if type(protocol) is RequestHandler:
        protocol.__class__ = _LeaveAwareHandler  # see _LeaveAwareHandler

    def unregister() -> None:
        if cast(object, content._waiter) is hook:
            content._waiter = None

    return unregister


class _ClientGone:
    """A future's stand-in in the request body's reader, whose waiter slot is free once the body was read.

    It is called the moment the client's leaving is read (`_LeaveAwareHandler.eof_received`), and
    failing that (a reset instead of a FIN) when aiohttp fails the request's body reader inside
    `connection_lost`, before it cancels the handler. Either way the callback runs at once, not
    after the cancellations and teardowns of every other client that left in the same loop turn.
    """

    __slots__ = ("_callback",)

    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback: Callable[[], None] | None = callback

    def done(self) -> bool:
        """Never done: aiohttp then calls `set_exception` when the connection is lost."""
        return False

    def set_result(self, result: None) -> None:
        """More of a body already read: nothing to do."""

    def set_exception(self, exc: BaseException) -> None:
        """The client's connection is lost."""
        self.left()

    def left(self) -> None:
        """The client left: call the callback, once."""
        callback, self._callback = self._callback, None
        if callback is None:
            return
        try:
            callback()
        except Exception:  # inside aiohttp's protocol callbacks: never let it fail there
            log.exception("client_gone_callback_failed")


class _LeaveAwareHandler(RequestHandler):
    """aiohttp's connection protocol, which also tells the stream the moment the client's FIN is read.

    aiohttp does nothing on a FIN: the transport closes and calls `connection_lost` on the loop's
    next turn, behind every callback queued before it. When a crowd leaves, that turn also runs
    the handler teardowns of those who left first, so an upstream closed from `connection_lost`
    waited for them (bench crowd: 60-100 µs a client, a turn late). aiohttp builds this protocol
    itself, with no way to name its class, so `watch` gives a streaming connection this class,
    which adds no state (same slots) and only this method.
    """

    __slots__ = ()

    def eof_received(self) -> None:
        request = self._current_request
        waiter: object = request.content._waiter if request is not None else None
        if isinstance(waiter, _ClientGone):
            waiter.left()
        super().eof_received()  # returns None: the transport closes, connection_lost follows


def _nothing() -> None:
    pass
