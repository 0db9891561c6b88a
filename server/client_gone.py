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
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from .http_protocol import GatewayProtocol

log = structlog.get_logger("sluice.client_gone")


def watch(request: BaseRequest, callback: Callable[[], None]) -> Callable[[], None]:
    """Call `callback` the moment the client of `request` leaves; return what unregisters it.

    Registers nothing (and returns a no-op) while the request's body is still being read.
    """
    content = request.content
    if content._waiter is not None or not content.is_eof():
        return _nothing
    hook = _ClientGone(callback, content)
    content._waiter = hook  # type: ignore[assignment]  # a future's stand-in (see _ClientGone)
    protocol = request.protocol
    if type(protocol) is GatewayProtocol or type(protocol) is RequestHandler:
        protocol.__class__ = _LeaveAwareHandler  # see _LeaveAwareHandler
    # A bound method, not a closure over the two: a function and its cells, kept for the stream's
    # life, cost about 120 bytes more per live stream.
    return hook.unregister


class _ClientGone:
    """A future's stand-in in the request body's reader, whose waiter slot is free once the body was read.

    It is called the moment the client's leaving is read (`_LeaveAwareHandler.eof_received`), and
    failing that (a reset instead of a FIN) when aiohttp fails the request's body reader inside
    `connection_lost`, before it cancels the handler. Either way the callback runs at once, not
    after the cancellations and teardowns of every other client that left in the same loop turn.
    """

    __slots__ = ("_callback", "_content")

    def __init__(self, callback: Callable[[], None], content: StreamReader) -> None:
        self._callback: Callable[[], None] | None = callback
        # The reader whose waiter slot this fills: the two refer to each other until `unregister`
        # or aiohttp empties the slot (on the connection's loss), whichever comes first.
        self._content: StreamReader | None = content

    def unregister(self) -> None:
        """Leave the reader's waiter slot (if still in it): the callback is not called from now on."""
        content, self._content = self._content, None
        if content is not None and cast(object, content._waiter) is self:
            content._waiter = None

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


class _LeaveAwareHandler(GatewayProtocol):
    """aiohttp's connection protocol, which also tells the stream the moment the client's FIN is read.

    aiohttp does nothing on a FIN: the transport closes and calls `connection_lost` on the loop's
    next turn, behind every callback queued before it. When a crowd leaves, that turn also runs
    the handler teardowns of those who left first, so an upstream closed from `connection_lost`
    waited for them (bench crowd: 60-100 µs a client, a turn late). aiohttp builds the protocol
    itself, with no way to name its class, so `watch` gives a streaming connection this class,
    which adds no state (same slots) and only this method to `GatewayProtocol`'s.
    """

    __slots__ = ()

    def eof_received(self) -> None:
        request = self._current_request
        # A request without a body reads aiohttp's shared empty payload, which has no waiter slot.
        waiter: object = getattr(request.content, "_waiter", None) if request is not None else None
        if isinstance(waiter, _ClientGone):
            waiter.left()
        super().eof_received()  # returns None: the transport closes, connection_lost follows


def _nothing() -> None:
    pass
