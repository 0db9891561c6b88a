"""Hand an upstream stream's batches to a consumer from the connection's data callback.

aiohttp's client feeds each read of a body to a StreamReader and wakes the coroutine waiting in
`readany()`: a task wake-up, a new future and three async layers per event of a paced stream.
Here the reader's waiter slot holds a `Pushed` instead of a future, so aiohttp, "setting its
result" inside the connection's `data_received`, runs the consumer there and then.

Inside that callback the parser that fed the reader is still running, so the reader is emptied
without `read_nowait()`: that resumes the protocol, which feeds the parser again, re-entrantly.
`take_buffered` does the same bookkeeping without it. Both lean on aiohttp's StreamReader
internals (pinned in requirements.txt); `tests/test_upstream_push.py` pins what they rely on.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import cast

import aiohttp

from ..chunks import Chunk

# What `take()` returns: a batch, [] when nothing more is buffered, None once the stream ended.
Take = Callable[[], "list[Chunk] | None"]


def take_buffered(reader: aiohttp.StreamReader) -> bytes:
    """Everything `reader` holds now (b"" if nothing), read as `read_nowait()` would, minus its resume."""
    buffer = reader._buffer
    if not buffer:
        return b""
    offset = reader._buffer_offset
    if len(buffer) == 1 and not offset:
        data = buffer.popleft()
    else:
        first = buffer.popleft()
        data = b"".join((first[offset:] if offset else first, *buffer))
        buffer.clear()
        reader._buffer_offset = 0
    reader._size -= len(data)
    reader._cursor += len(data)
    splits = reader._http_chunk_splits
    while splits and splits[0] < reader._cursor:
        splits.popleft()
    return data


class Pushed:
    """One push of batches from `take` to `on_batch`, until `on_batch` says stop, the end, or a failure."""

    __slots__ = ("_context", "_on_batch", "_reader", "_scheduled", "_take", "future")

    def __init__(
        self,
        take: Take,
        reader: aiohttp.StreamReader,
        on_batch: Callable[[list[Chunk]], bool],
        future: asyncio.Future[None],
    ) -> None:
        self._take = take
        self._reader: aiohttp.StreamReader | None = reader
        self._on_batch = on_batch
        self.future = future
        # The callback runs in the connection's context; the consumer's logs need the request's.
        self._context = contextvars.copy_context()
        self._scheduled = False

    def start(self) -> None:
        """Hand over what is buffered, then wait for reads; resume the upstream if aiohttp paused it."""
        self._pump()
        reader = self._reader
        if reader is None:
            return
        protocol = reader._protocol
        if protocol._reading_paused:
            # The reader's buffer filled while nothing pushed. Resuming feeds the parser's held
            # bytes to the reader, and so to this push, at once; and reads the socket again.
            protocol.resume_reading()
        elif (transport := protocol.transport) is not None and not transport.is_reading():
            transport.resume_reading()  # paused by the push before this one (see _pump)

    def stop(self) -> None:
        """Hand over nothing more; the reader buffers (and then pauses the upstream) as usual."""
        reader, self._reader = self._reader, None
        # The slot is typed as a future; this object stands in for one (see the module docstring).
        if reader is not None and cast(object, reader._waiter) is self:
            reader._waiter = None

    def _pump(self) -> None:
        try:
            while self._reader is not None:
                batch = self._take()
                if batch is None:
                    self._resolve(None)
                    return
                if not batch:
                    if self._reader._waiter is None:
                        self._reader._waiter = self  # type: ignore[assignment]  # a future's stand-in
                    return
                if not self._on_batch(batch):
                    # The consumer is full: stop reading the upstream's socket now rather than
                    # let aiohttp buffer up to its mark in small pieces (what a stalled reader
                    # would hold); the kernel's buffers hold the rest, and the upstream slows.
                    # The transport, not aiohttp's protocol: that one also pauses its parser,
                    # which only a callback of the parser may do.
                    transport = self._reader._protocol.transport
                    if transport is not None:
                        transport.pause_reading()
                    self._resolve(None)
                    return
        except Exception as exc:  # the reader's failure, or the consumer's: the awaiting relay handles it
            self._resolve(exc)

    def _resolve(self, failure: Exception | None) -> None:
        self.stop()
        if self.future.done():
            return  # the relay was cancelled meanwhile
        if failure is None:
            self.future.set_result(None)
        else:
            self.future.set_exception(failure)

    # The part of asyncio.Future that aiohttp's StreamReader calls on its waiter.

    def done(self) -> bool:
        """Never done: aiohttp then always calls `set_result` or `set_exception`."""
        return False

    def set_result(self, result: None) -> None:
        """The reader got data, a chunk boundary or its end: push what is there, once this read is parsed.

        aiohttp wakes the reader once per HTTP chunk, and a burst's read holds many (one per
        event): pushing at the first would write each event alone. The push runs just after the
        parser's callback instead (one loop callback per read, not a task), with the whole read.
        """
        reader = self._reader
        if reader is not None and not reader._buffer and not reader.is_eof() and reader.exception() is None:
            reader._waiter = self  # type: ignore[assignment]  # the end of an HTTP chunk, nothing new: wait on
            return
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._deferred_pump, context=self._context)

    def _deferred_pump(self) -> None:
        self._scheduled = False
        reader = self._reader
        self._pump()
        if self._reader is not None and reader is not None and reader._protocol._reading_paused:
            # A large read filled the reader past aiohttp's mark: outside the parser's callback
            # now, resuming is safe, and feeds what the protocol held back.
            reader._protocol.resume_reading()

    def set_exception(self, exc: BaseException) -> None:
        """The reader failed: `take()` raises it, and the push resolves with it."""
        self._context.run(self._pump)
