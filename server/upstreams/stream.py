"""An open upstream stream: read ahead to its first token, then hand its chunk batches to the relay."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import structlog

from ..chunks import MAX_EVENT_BYTES, Chunk, EventSplitter, MalformedChunk, parse_chunk
from ..errors import UpstreamProtocolError
from .failures import (
    KeyPieces,
    event_failure,
    malformed_reply,
    message_text,
    redact,
    redacted,
    reply_failure,
    reset_failure,
    unusable_reply,
)
from .http1 import ConnectionBroken
from .parser import MalformedResponse
from .push import Body, Pushed
from .response import BOM

log = structlog.get_logger("sluice.upstream")

# The most of a JSON reply read in place of an event stream (see UpstreamStream._read_first).
JSON_REPLY_LIMIT = 64 * 1024
# How an event stream's first line starts (a field, or a comment): a stream labelled with another
# type (a web framework's default `text/html` or `text/plain`) is still read as one.
EVENT_STARTS = (b"data:", b":", b"event:", b"id:", b"retry:")
# No choice finished yet: shared, as RelayEvents shares its own.
NONE_FINISHED: frozenset[int] = frozenset()


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


def _media_type(response: Response) -> str | None:
    """The type of `response`'s body, lower case without parameters; None for an event stream or none said.

    Test doubles of a response may have no headers: their bytes alone decide.
    """
    headers = getattr(response, "headers", None)
    value = headers.get("content-type") if headers is not None else None
    if not value:
        return None
    kind = str(value).partition(";")[0].strip().lower()
    return None if kind in ("", "text/event-stream") else kind


class UpstreamStream:
    """Chunk batches of one upstream response; `close()` it always, in a finally.

    `prime()` reads until the first chunk that carries a token (content, tool calls, reasoning:
    any delta but a role; or a finish reason), so a failure before it (a reset, an error event, an
    error sent as a JSON reply, an early end) is raised while a retry is still possible; what it
    read is replayed first by iteration.

    A connection that fails once every choice that appeared has finished (the usage chunk or
    `[DONE]` still to come) ends the stream as its body's end would: the answer is whole, as after
    a silence past the finish (see relay.py), and nothing is to be retried or continued. Its usage
    chunk, if the cut took it, is missing: the access log then counts the relayed chunks.
    `cut_after_finish` tells it happened.
    """

    def __init__(
        self,
        response: Response,
        upstream: str,
        on_close: Callable[[], None] | None = None,
        max_event_bytes: int = MAX_EVENT_BYTES,
        key_pieces: KeyPieces = frozenset(),
    ) -> None:
        """`key_pieces`: the upstream's own key (failures.key_pieces), masked in any error it sends."""
        self._response = response
        self._key_pieces = key_pieces
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
        # As RelayEvents counts them: one more than the highest choice index seen, and those finished.
        self._choices = 1
        self._finished: frozenset[int] = NONE_FINISHED
        self.cut_after_finish = False

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
        """Read the body's first bytes: a reply in place of events raises what it stands for.

        Some upstreams answer a stream request with status 200 and a JSON error object (`{"error":
        ...}`, "model overloaded"). Read as events it holds none, and its message was lost to "ended
        the stream before its first token". An event stream never starts with `{` (its lines start
        with a field name, `:` or nothing), so the bytes tell, whatever the Content-Type says:
        a stream sent as the wrong type is still read as it arrives, not held. Reads of blank lines
        alone tell nothing (a server may write a `\n` before its JSON): what follows them decides.
        A body of another type that does not start as events (an HTML page) is a malformed reply,
        as it is to a non-streaming call: not asked again of this upstream. One leading UTF-8
        BOM is dropped, as the SSE standard's parser drops it: left, it made the first line
        `\ufeffdata: ...`, no field Sluice knows, and the first event was lost.
        """
        body = self._response.body
        first = await body.read()
        if first[:1] == b"\xef":  # maybe a BOM: its first event would be lost behind it
            first = await self._without_bom(first)
        while first.isspace():  # no event and no JSON in it (dropped: a blank line before any field is none)
            first = await body.read()
        if first.lstrip()[:1] != b"{":
            kind = _media_type(self._response)
            if kind is not None and not first.lstrip().startswith(EVENT_STARTS):
                # An HTML page, text, JSON that is no object: neither a stream, nor an error, nor a completion.
                log.warning("upstream_stream_not_events", upstream=self.upstream, content_type=kind[:100])
                raise malformed_reply("The upstream answered the stream request with something else than events.")
            if first:
                self._unparsed = self._splitter.feed(first)
            return
        parts, size = [first], len(first)
        while size <= JSON_REPLY_LIMIT and (piece := await body.read()):
            parts.append(piece)
            size += len(piece)
        raise redacted(reply_failure(b"".join(parts)), self._key_pieces)

    async def _without_bom(self, first: bytes) -> bytes:
        """The body's first bytes without a leading BOM, which a server may have written alone."""
        body = self._response.body
        while len(first) < len(BOM) and BOM.startswith(first) and (more := await body.read()):
            first += more
        if not first.startswith(BOM):
            return first
        return first[len(BOM) :] or await body.read()

    async def __aiter__(self) -> AsyncIterator[list[Chunk]]:
        """Batches of chunks, one per network read: what arrived together is relayed together."""
        while self._primed:
            yield self._primed.pop(0)
        try:
            while (batch := await self._read_batch()) is not None:
                yield batch
        except (ConnectionBroken, MalformedResponse) as exc:
            if not self._whole_when_cut(exc):
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
            if chunk.error is not None and self._key_pieces:
                # Every reader of the chunk (the pulling and the pushing relay) meets it masked.
                chunk.error = {**chunk.error, "message": redact(message_text(chunk.error), self._key_pieces)}
                chunk.error.pop("detail", None)
            batch.append(chunk)
            if chunk.finish_reason is not None or chunk.choices_seen > self._choices:
                self._count_choices(chunk)
            if not self._delta_seen and (chunk.has_delta or chunk.other_delta):
                # The first token leaves before the rest of its read (a burst) is parsed.
                self._delta_seen = True
                self._unparsed = raws[index + 1 :]
                return batch
        if self.finished or body_ended:
            self._ended = True
        if self._splitter.overflowed and not batch:
            # An endless line must end the stream, explicitly, not wait for an idle timeout.
            raise unusable_reply(
                f"The upstream sent an event larger than {self._max_event_bytes} bytes.",
                code="upstream_event_too_large",
            )
        return batch

    def _count_choices(self, chunk: Chunk) -> None:
        if chunk.choices_seen > self._choices:
            self._choices = chunk.choices_seen
        if chunk.finished_choices:
            self._finished = self._finished.union(chunk.finished_choices)

    def _whole_when_cut(self, failure: Exception) -> bool:
        """Whether the answer was whole when `failure` cut the connection: then it ends the stream, as its end would."""
        if len(self._finished) < self._choices:
            return False
        # A cut event (a usage chunk half sent) is dropped with the splitter's rest.
        self._ended, self._unparsed, self.cut_after_finish = True, [], True
        log.info("upstream_stream_cut_after_finish", upstream=self.upstream, error=type(failure).__name__)
        return True

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
                if self._whole_when_cut(failure):
                    return None
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
