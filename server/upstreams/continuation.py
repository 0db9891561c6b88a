"""Continue a stream cut after tokens: re-ask with the text so far as an assistant prefill, and splice.

When the upstream fails mid-stream (a reset, an error event, an end before a finish reason, a stall
of `idle_timeout`: this wrapper watches the gap between chunks itself) after
some text went out, and an upstream of the model declares `continuation = "assistant-prefill"`,
the same request is sent again with that text as a final assistant message (plus the upstream's
`continuation_body`). What it streams goes on in the same client stream: its opening role chunk is
dropped, so there is no duplicate and no gap, the one finish reason is its own, and its usage chunk
is rewritten to count the tokens of both parts, marked `"sluice_continued": true`.

If no continuation is possible (tool calls were streaming, nothing was sent yet, none configured)
or it is refused, the original failure goes on to the relay exactly as it happened: the client's
error describes the cut, never the refused continuation.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import orjson
import structlog

from ..chunks import Chunk
from ..errors import UpstreamError
from .failures import timeout_failure
from .stream import UpstreamStream

log = structlog.get_logger("sluice.continuation")

# Continuations one stream may take before its failure is reported.
MAX_CONTINUATIONS = 2

Resume = Callable[[str], Awaitable[UpstreamStream]]


class ContinuedStream:
    """Chunk batches of `first`, continued by `resume(text_so_far)` after a cut."""

    def __init__(
        self,
        first: AsyncIterable[Sequence[Chunk]],
        resume: Resume,
        on_result: Callable[[str], None],
        *,
        idle_timeout: float,
    ) -> None:
        self._first = first
        self._idle_timeout = idle_timeout
        self._resume = resume
        self._on_result = on_result
        self._opened: list[UpstreamStream] = []
        self._text: list[str] = []
        self._continuable = True
        self._first_tokens = 0

    async def __aiter__(self) -> AsyncIterator[list[Chunk]]:
        source: AsyncIterable[Sequence[Chunk]] = self._first
        continued = 0
        while True:
            error_chunk: Chunk | None = None
            broken: BaseException | None = None
            finished = False
            try:
                async for batch in self._watched(source):
                    kept: list[Chunk] = []
                    for chunk in batch:
                        if chunk.error is not None:
                            error_chunk = chunk
                            break
                        if continued and not (chunk.has_delta or chunk.finish_reason or chunk.usage):
                            continue  # the continuation's opening role chunk
                        finished = finished or chunk.finish_reason is not None
                        kept.append(self._note(chunk, continued > 0))
                    if kept:
                        yield kept
                    if error_chunk is not None:
                        break
            except (aiohttp.ClientError, UpstreamError) as exc:
                broken = exc
            if finished and error_chunk is None and broken is None:
                return
            next_source = None
            if continued < MAX_CONTINUATIONS and self._continuable and self._text:
                next_source = await self._continue()
            if next_source is None:
                if error_chunk is not None:
                    yield [error_chunk]
                if broken is not None:
                    raise broken
                return  # the relay reports an end before the finish reason
            source = next_source
            continued += 1

    async def _watched(self, source: AsyncIterable[Sequence[Chunk]]) -> AsyncIterator[Sequence[Chunk]]:
        """The batches of `source`; once text flowed, a gap longer than `idle_timeout` is a failure."""
        batches = aiter(source)
        while True:
            try:
                async with asyncio.timeout(self._idle_timeout if self._text else None):
                    batch = await anext(batches)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise timeout_failure("idle_timeout", "The upstream went silent mid-stream.") from None
            yield batch

    def close(self) -> None:
        """Close every continuation opened (the first stream is its owner's to close)."""
        for stream in self._opened:
            stream.close()

    async def _continue(self) -> UpstreamStream | None:
        try:
            stream = await self._resume("".join(self._text))
        except UpstreamError as refused:
            log.warning("continuation_refused", code=refused.code, status=refused.status)
            self._on_result("refused")
            return None
        self._opened.append(stream)
        log.info("stream_continued", upstream=stream.upstream, prefill_chars=sum(map(len, self._text)))
        self._on_result("continued")
        return stream

    def _note(self, chunk: Chunk, continued: bool) -> Chunk:
        if chunk.content:
            self._text.append(chunk.content)
            if not continued:
                self._first_tokens += 1
        elif chunk.has_delta:
            self._continuable = False  # tool calls or a refusal cannot be prefilled
        if continued and chunk.usage is not None:
            return _summed(chunk, self._first_tokens)
        return chunk


def _summed(chunk: Chunk, first_tokens: int) -> Chunk:
    """The continuation's usage chunk, counting the tokens the cut stream sent before it."""
    usage: dict[str, Any] = dict(chunk.usage or {})
    completion = usage.get("completion_tokens")
    if isinstance(completion, int):
        usage["completion_tokens"] = completion + first_tokens
        prompt = usage.get("prompt_tokens")
        usage["total_tokens"] = usage["completion_tokens"] + (prompt if isinstance(prompt, int) else 0)
    usage["sluice_continued"] = True
    body = orjson.loads(chunk.raw)
    body["usage"] = usage
    return Chunk(orjson.dumps(body), chunk.content, chunk.has_delta, chunk.finish_reason, usage)
