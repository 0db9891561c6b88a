"""An open upstream stream: read ahead to its first token, then hand its chunk batches to the relay."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import aiohttp
import structlog

from ..chunks import Chunk, EventSplitter, MalformedChunk, parse_chunk
from .failures import event_failure, reset_failure

log = structlog.get_logger("sluice.upstream")


class UpstreamStream:
    """Chunk batches of one upstream response; `close()` it always, in a finally.

    `prime()` reads until the first chunk that carries content (or a finish reason), so a failure
    before it (a reset, an error event, an early end) is raised while a retry is still possible;
    what it read is replayed first by iteration.
    """

    def __init__(
        self, response: aiohttp.ClientResponse, upstream: str, on_close: Callable[[], None] | None = None
    ) -> None:
        self._response = response
        self._splitter = EventSplitter()
        self._primed: list[list[Chunk]] = []
        self._ended = False
        self._on_close = on_close
        self.upstream = upstream
        self.finished = False
        self.malformed = 0

    async def prime(self) -> None:
        """Read up to the first content; raise UpstreamError for a failure before it."""
        try:
            while (batch := await self._read_batch()) is not None:
                self._primed.append(batch)
                for chunk in batch:
                    if chunk.error is not None:
                        raise event_failure(chunk.error)
                    if chunk.has_delta or chunk.finish_reason is not None:
                        return
        except aiohttp.ClientError as exc:
            log.warning("upstream_stream_reset", upstream=self.upstream, error=type(exc).__name__)
            raise reset_failure() from exc
        raise reset_failure("The upstream ended the stream before its first token.")

    async def __aiter__(self) -> AsyncIterator[list[Chunk]]:
        """Batches of chunks, one per network read: what arrived together is relayed together."""
        while self._primed:
            yield self._primed.pop(0)
        while (batch := await self._read_batch()) is not None:
            yield batch

    async def _read_batch(self) -> list[Chunk] | None:
        """The next non-empty batch, or None once the body (or `[DONE]`) ended it."""
        content = self._response.content
        while not self._ended:
            piece = await content.readany()
            batch: list[Chunk] = []
            for raw in self._splitter.feed(piece) if piece else self._splitter.close():
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
            if self.finished or not piece:
                self._ended = True
            if batch:
                return batch
        return None

    def close(self) -> None:
        """Return a finished connection to the pool; close an unfinished one, which stops the upstream."""
        if self.finished and self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close()
