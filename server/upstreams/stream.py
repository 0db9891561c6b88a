"""An open upstream stream: read ahead to its first token, then hand its chunk batches to the relay."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import structlog

from ..chunks import MAX_EVENT_BYTES, Chunk, EventSplitter, MalformedChunk, parse_chunk
from ..errors import UpstreamProtocolError
from .failures import event_failure, reply_failure, reset_failure
from .http1 import ConnectionBroken
from .parser import MalformedResponse
from .push import Body, Pushed
from .response import BOM

log = structlog.get_logger("sluice.upstream")

# The most of a JSON reply read in place of an event stream (see UpstreamStream._read_first).
JSON_REPLY_LIMIT = 64 * 1024


class Response(Protocol):
    """What the stream reads: the body on its connection, and the way to end it (UpstreamResponse)."""

    @property
    def body(self) -> Body: ...

    def release(self) -> None: ...

    def close(self) -> None: ...


def _broken(failure: Exception) -> UpstreamProtocolError:
    """The relay's error for a connection that failed, or answered badly, mid-stream."""
    log.warning("upstream_stream_failed", error=type(failure).__name__)
    error = UpstreamProtocolError("The upstream connection failed mid-stream.")
    error.reason = "reset"
    return error


class UpstreamStream:
    """Chunk batches of one upstream response; `close()` it always, in a finally.

    `prime()` reads until the first chunk that carries a token (content, tool calls, reasoning:
    any delta but a role; or a finish reason), so a failure before it (a reset, an error event, an
    error sent as a JSON reply, an early end) is raised while a retry is still possible; what it
    read is replayed first by iteration.
    """

    def __init__(
        self,
        response: Response,
        upstream: str,
        on_close: Callable[[], None] | None = None,
        max_event_bytes: int = MAX_EVENT_BYTES,
    ) -> None:
        self._response = response
        self._splitter = EventSplitter(max_event_bytes)
        self._max_event_bytes = max_event_bytes
        self._primed: list[list[Chunk]] = []
        self._ended = False
        self._on_close = on_close
        self.upstream = upstream
        self.finished = False
        self.malformed = 0
        self._unparsed: list[bytes] = []
        self._delta_seen = False
        self._pushed: Pushed | None = None

    async def prime(self) -> None:
        """Read up to the first token; raise UpstreamError for a failure before it."""
        try:
            await self._read_first()
            while (batch := await self._read_batch()) is not None:
                self._primed.append(batch)
                for chunk in batch:
                    if chunk.error is not None:
                        raise event_failure(chunk.error)
                    if chunk.has_delta or chunk.other_delta or chunk.finish_reason is not None:
                        return
        except (ConnectionBroken, MalformedResponse) as exc:
            log.warning("upstream_stream_reset", upstream=self.upstream, error=type(exc).__name__)
            raise reset_failure() from exc
        raise reset_failure("The upstream ended the stream before its first token.")

    async def _read_first(self) -> None:
        """Read the body's first bytes: a JSON reply in place of events raises what it stands for.

        Some upstreams answer a stream request with status 200 and a JSON error object (`{"error":
        ...}`, "model overloaded"). Read as events it holds none, and its message was lost to "ended
        the stream before its first token". An event stream never starts with `{` (its lines start
        with a field name, `:` or nothing), so the bytes tell, whatever the Content-Type says:
        a stream sent as the wrong type is still read as it arrives, not held. One leading UTF-8
        BOM is dropped, as the SSE standard's parser drops it: left, it made the first line
        `\ufeffdata: ...`, no field Sluice knows, and the first event was lost.
        """
        body = self._response.body
        first = await body.read()
        if first[:1] == b"\xef":  # maybe a BOM: its first event would be lost behind it
            first = await self._without_bom(first)
        if first.lstrip()[:1] != b"{":
            if first:
                self._unparsed = self._splitter.feed(first)
            return
        parts, size = [first], len(first)
        while size <= JSON_REPLY_LIMIT and (piece := await body.read()):
            parts.append(piece)
            size += len(piece)
        raise reply_failure(b"".join(parts))

    async def _without_bom(self, first: bytes) -> bytes:
        """The body's first bytes without a leading BOM, which a server may have written alone."""
        body = self._response.body
        while len(first) < len(BOM) and BOM.startswith(first) and (more := await body.read()):
            first += more
        if not first.startswith(BOM):
            return first
        return first[len(BOM) :] or await body.read()

    async def opened(self) -> UpstreamStream:
        """This stream: it is open already (see the relay's push path)."""
        return self

    async def __aiter__(self) -> AsyncIterator[list[Chunk]]:
        """Batches of chunks, one per network read: what arrived together is relayed together."""
        while self._primed:
            yield self._primed.pop(0)
        try:
            while (batch := await self._read_batch()) is not None:
                yield batch
        except (ConnectionBroken, MalformedResponse) as exc:
            raise _broken(exc) from exc

    async def _read_batch(self) -> list[Chunk] | None:
        """The next non-empty batch, or None once the body (or `[DONE]`) ended it."""
        body = self._response.body
        while self._unparsed or not self._ended:
            if self._unparsed:
                raws, self._unparsed = self._unparsed, []
                batch = self._parse(raws, body_ended=False)
            else:
                piece = await body.read()
                batch = self._parse(self._splitter.feed(piece) if piece else self._splitter.close(), not piece)
            if batch:
                return batch
        return None

    def _parse(self, raws: list[bytes], body_ended: bool) -> list[Chunk]:
        """The chunks of one read's events; sets `_ended` once the body or `[DONE]` ended the stream."""
        batch: list[Chunk] = []
        for index, raw in enumerate(raws):
            try:
                chunk = parse_chunk(raw)
            except MalformedChunk as exc:
                # One bad chunk must not end a stream that is otherwise fine.
                self.malformed += 1
                log.warning("upstream_chunk_malformed", reason=str(exc), size=len(raw))
                continue
            if chunk.done:
                self.finished = True
                break
            batch.append(chunk)
            if not self._delta_seen and (chunk.has_delta or chunk.other_delta):
                # The first token leaves before the rest of its read (a burst) is parsed.
                self._delta_seen = True
                self._unparsed = raws[index + 1 :]
                return batch
        if self.finished or body_ended:
            self._ended = True
        if self._splitter.overflowed and not batch:
            # An endless line must end the stream, explicitly, not wait for an idle timeout.
            raise UpstreamProtocolError(
                f"The upstream sent an event larger than {self._max_event_bytes} bytes.",
                code="upstream_event_too_large",
            )
        return batch

    @property
    def ended(self) -> bool:
        """True once every batch was handed out: the body or `[DONE]` ended the stream."""
        return self._ended and not self._unparsed and not self._primed

    def push(self, on_batch: Callable[[list[Chunk]], bool]) -> asyncio.Future[None]:
        """Hand batches to `on_batch` as they arrive, inside the connection's data callback.

        The relay's way to forward events without a task wake-up per event. Batches already read
        go first, at once. Pushing stops when `on_batch` returns False (the client's buffer is
        full: the caller waits, then pushes again), when the stream ended, or when it failed
        (also when `on_batch` raised); the returned future then resolves, or raises what failed.
        While nothing is pushed, the connection buffers READ_BUFFER_BYTES and then stops reading
        the upstream: the backpressure of the pulling relay. Call `stop_push()` in a finally.
        """
        self.stop_push()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pushed = Pushed(self._take, self._response.body, on_batch, future)
        self._pushed.start()
        return future

    def _take(self) -> list[Chunk] | None:
        """The next batch ready without waiting, [] when the network must be waited for, None at the end."""
        body = self._response.body
        while True:
            if self._primed:
                return self._primed.pop(0)
            if self._unparsed:
                raws, self._unparsed = self._unparsed, []
                batch = self._parse(raws, body_ended=False)
            elif self._ended:
                return None
            elif piece := body.take():
                batch = self._parse(self._splitter.feed(piece), body_ended=False)
            elif (failure := body.failure) is not None:
                raise _broken(failure)  # after what arrived before it
            elif body.at_eof:
                batch = self._parse(self._splitter.close(), body_ended=True)
            else:
                return []
            if batch:
                return batch

    def stop_push(self) -> None:
        """Stop handing out batches (the relay is done, cancelled or waiting for the client)."""
        if self._pushed is not None:
            self._pushed.stop()
            self._pushed = None

    def close(self) -> None:
        """Return a finished connection to the pool; close an unfinished one, which stops the upstream."""
        self.stop_push()
        if self.finished and self._response.body.at_eof:
            self._response.release()
        else:
            self._response.close()
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close()
