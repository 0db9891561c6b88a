"""Hand an upstream stream's batches to a consumer from the connection's data callback.

The connection (upstreams/http1.py) calls its `on_data` hook once per read, after the read's
body was parsed: the consumer runs there and then, with the whole read, and no task wakes up
between the socket and the client's transport.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Protocol

from ..chunks import Chunk

# What `take()` returns: a batch, [] when nothing more is buffered, None once the stream ended.
Take = Callable[[], "list[Chunk] | None"]


class Body(Protocol):
    """A response body being read: Http1Connection."""

    on_data: Callable[[], None] | None

    def take(self) -> bytes:
        """The bytes buffered now, b"" if none."""

    async def read(self) -> bytes:
        """The next bytes; b"" at the end."""

    @property
    def at_eof(self) -> bool:
        """True once the body ended and every byte was taken."""

    @property
    def failure(self) -> Exception | None:
        """Why the body could not be read to its end."""

    def pause(self) -> None:
        """Stop reading the upstream."""

    def resume(self) -> None:
        """Read the upstream again."""


class Pushed:
    """One push of batches from `take` to `on_batch`, until `on_batch` says stop, the end, or a failure."""

    __slots__ = ("_body", "_context", "_future", "_on_batch", "_take")

    def __init__(
        self,
        take: Take,
        body: Body,
        on_batch: Callable[[list[Chunk]], bool],
        future: asyncio.Future[None],
    ) -> None:
        self._take = take
        self._body: Body | None = body
        self._on_batch = on_batch
        self._future: asyncio.Future[None] | None = future
        # The callback runs in the context of whoever opened the connection; the consumer's logs
        # need the request's.
        self._context = contextvars.copy_context()

    def start(self) -> None:
        """Hand over what is buffered, then each read as it arrives; resume the upstream if it was paused."""
        body = self._body
        if body is None:
            return
        body.on_data = self._on_data
        self._pump()
        if self._body is not None:
            body.resume()  # paused by the push before this one, or by a full buffer while nobody pushed

    def stop(self) -> None:
        """Hand over nothing more; the connection buffers (and then pauses the upstream) as for a pulling reader."""
        body, self._body = self._body, None
        if body is not None and body.on_data == self._on_data:
            body.on_data = None

    def _on_data(self) -> None:
        self._context.run(self._pump)

    def _pump(self) -> None:
        try:
            while (body := self._body) is not None:
                batch = self._take()
                if batch is None:
                    self._resolve(None)
                    return
                if not batch:
                    return
                if not self._on_batch(batch):
                    # The consumer is full: stop reading the upstream's socket now; the kernel's
                    # buffers hold the rest, and the upstream slows.
                    body.pause()
                    self._resolve(None)
                    return
        except Exception as exc:  # the body's failure, or the consumer's: the awaiting relay handles it
            self._resolve(exc)

    def _resolve(self, failure: Exception | None) -> None:
        self.stop()
        # Let go of the future: a failure's traceback holds `_pump`'s frame and so this object,
        # which holding the future (and so the failure) would make a cycle for the collector.
        future, self._future = self._future, None
        if future is None or future.done():
            return  # resolved already, or the relay was cancelled meanwhile
        if failure is None:
            future.set_result(None)
        else:
            future.set_exception(failure)
