"""Continue a stream cut after tokens: re-ask with the text so far as an assistant prefill, and splice.

When the upstream fails mid-stream (a reset, an error event, an end before a finish reason, a stall
of `idle_timeout`: this wrapper watches the gap between any two chunks itself, tool-call and
reasoning deltas included) after some text went out and before the finish reason (after it, the
answer is whole: nothing is continued), and an upstream of the model declares
`continuation = "assistant-prefill"`, the cut request is closed (a stalled one would go on
generating, and holding its connection and concurrency slot, until the whole stream ended) and
the same request is sent again with that text as a final assistant message (plus the upstream's
`continuation_body`). What it streams goes on in the same client stream: its opening role chunk is
dropped, so there is no duplicate and no gap, the one finish reason is its own, and its usage chunk
is rewritten to count the tokens of both parts, marked `"sluice_continued": true`.

If no continuation is possible (nothing was sent yet, none configured) or it is refused, the
original failure goes on to the relay exactly as it happened: the client's error describes the cut,
never the refused continuation. Sluice refuses it itself, without asking, when tool calls were
streaming or the request asked for several choices (`n` > 1): one assistant prefill holds one reply.

The parts together keep the client's token limit (`max_completion_tokens`, else `max_tokens`): a
continuation asks for what is left of it, each content chunk relayed counting one token (as
OpenAI streams them, and as the summed usage counts them). A cut once every allowed token went out
is not continued: the upstream was at its limit, where it would have sent choice 0's finish chunk
with "length" and then its end, and Sluice sends that finish chunk (the cut one's id, model and
created) and ends the stream normally. No usage chunk comes with it, even when the client asked
for one: only the upstream knows its prompt's tokens, and the cut took its usage chunk; the access
log counts the completion tokens relayed (`"counted_by": "sluice"`).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeGuard

import aiohttp
import orjson
import structlog

from ..chunks import Chunk
from ..errors import UpstreamError
from .failures import timeout_failure
from .portable import lowered
from .stream import UpstreamStream

log = structlog.get_logger("sluice.continuation")

# Continuations one stream may take before its failure is reported.
MAX_CONTINUATIONS = 2

Resume = Callable[[str], Awaitable[UpstreamStream]]

# A chat body's token limits, the newer name first: it supersedes the older one where both are set.
LIMIT_FIELDS = ("max_completion_tokens", "max_tokens")


def token_limit(body: Mapping[str, Any]) -> int | None:
    """The completion's token limit `body` sets (None: none): `max_completion_tokens`, else `max_tokens`."""
    for name in LIMIT_FIELDS:
        value = body.get(name)
        if _is_count(value):
            return int(value)
    return None


def within(body: dict[str, Any], tokens_left: int | None) -> dict[str, Any]:
    """`body` with each token limit it sets lowered to `tokens_left` (unchanged when None)."""
    if tokens_left is None:
        return body
    return {**body, **{name: lowered(body[name], tokens_left) for name in LIMIT_FIELDS if _is_count(body.get(name))}}


def _is_count(value: object) -> TypeGuard[int | float]:
    # `6.0` is an integer to JSON Schema, and to an upstream.
    return isinstance(value, int | float) and not isinstance(value, bool)


class ContinuedStream:
    """Chunk batches of `first`, continued by `resume(text_so_far)` after a cut.

    `choices` is the request's `n` (with more than one, a cut is not continued) and `limit` its
    token limit (`token_limit`), which `resume` keeps by asking for `tokens_left` at most (`within`).
    """

    def __init__(
        self,
        first: AsyncIterable[Sequence[Chunk]],
        resume: Resume,
        on_result: Callable[[str], None],
        *,
        idle_timeout: float,
        choices: int = 1,
        limit: int | None = None,
    ) -> None:
        self._first = first
        self._idle_timeout = idle_timeout
        self._resume = resume
        self._on_result = on_result
        self._opened: list[UpstreamStream] = []
        self._text: list[str] = []
        # Why Sluice will not continue this stream (None: it may).
        self._unfit: str | None = "several_choices" if choices > 1 else None
        self._limit = limit
        self._relayed = 0  # content chunks relayed, over every part: the tokens generated so far
        self._before = 0  # of them, those relayed before the part being read (the prefill it continues)
        self._last_content: bytes | None = None  # the last content chunk relayed: the model of a finish chunk
        self._opening: bytes | None = None  # the first chunk relayed: what the completion is called
        self._names: dict[str, Any] | None = None  # read from it once a continuation's chunk comes

    @property
    def tokens_left(self) -> int | None:
        """What a continuation may still generate under the client's limit (None: no limit)."""
        return None if self._limit is None else self._limit - self._relayed

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
                        if continued and not (
                            chunk.has_delta or chunk.other_delta or chunk.finish_reason or chunk.usage
                        ):
                            continue  # the continuation's opening role chunk (its reasoning is kept)
                        finished = finished or chunk.finish_reason is not None
                        kept.append(self._note(chunk, continued > 0))
                    if kept:
                        yield kept
                    if error_chunk is not None:
                        break
            except (aiohttp.ClientError, UpstreamError) as exc:
                broken = exc
            if finished:
                # The answer is whole: never continued, which would pay for a second one after it.
                # A silence after the finish is the relay's to end as done (a cut there ended the
                # part already: see UpstreamStream); anything else goes on to the relay as it came.
                if error_chunk is not None:
                    yield [error_chunk]
                if not (broken is None or _silent_after_finishing(broken)):
                    raise broken
                return
            _close(source)  # cut: its request is given up, before anything else is awaited
            if (at_limit := self._at_limit()) is not None:
                yield [at_limit]
                return
            next_source = None
            if continued < MAX_CONTINUATIONS and self._text:
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
        """The batches of `source`; a gap longer than `idle_timeout` between two of them is a failure.

        Whatever the chunks hold (text, tool calls, reasoning): the guard's own idle deadline is wider
        for such a stream (chat_call.deadlines_for), to leave a continuation room to open, so this is
        the deadline that holds between chunks. `source` has its first token already.
        """
        batches = aiter(source)
        while True:
            try:
                async with asyncio.timeout(self._idle_timeout):
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

    def _at_limit(self) -> Chunk | None:
        """The finish chunk the upstream would have sent next, when the cut came once every allowed token went out."""
        left = self.tokens_left
        if left is None or left > 0 or self._unfit is not None or self._last_content is None:
            return None
        log.info("stream_cut_at_token_limit", tokens=self._relayed)
        return _finish_chunk(self._last_content, "length")

    async def _continue(self) -> UpstreamStream | None:
        if self._unfit is not None:
            # Not asked at all: the client gets the cut's own error, as after an upstream's refusal.
            log.info("continuation_refused", reason=self._unfit)
            self._on_result("refused")
            return None
        try:
            stream = await self._resume("".join(self._text))
        except UpstreamError as refused:
            log.warning("continuation_refused", code=refused.code, status=refused.status)
            self._on_result("refused")
            return None
        self._opened.append(stream)
        self._before = self._relayed
        log.info("stream_continued", upstream=stream.upstream, prefill_chars=sum(map(len, self._text)))
        self._on_result("continued")
        return stream

    def _note(self, chunk: Chunk, continued: bool) -> Chunk:
        if self._opening is None:
            self._opening = chunk.raw
        if continued:
            chunk = _named_as(chunk, self._first_names())
        if chunk.content:
            self._text.append(chunk.content)
            self._relayed += 1
            self._last_content = chunk.raw
        elif chunk.has_delta:
            self._unfit = "tool_calls"  # tool calls (or a refusal) cannot be prefilled
        if continued and chunk.usage is not None:
            return _summed(chunk, self._before)
        return chunk

    def _first_names(self) -> dict[str, Any]:
        """The first part's id, created, model and system_fingerprint (those it has)."""
        if self._names is None:
            opening = orjson.loads(self._opening) if self._opening is not None else {}
            self._names = {name: opening[name] for name in _NAMES if name in opening}
        return self._names


# What names a completion in each of its chunks: the same in every one, as from one upstream request.
_NAMES = ("id", "created", "model", "system_fingerprint")


def _named_as(chunk: Chunk, names: Mapping[str, Any]) -> Chunk:
    """A continuation's `chunk` named as the first part: to its client one completion, not two.

    Its own id and created (and model and system_fingerprint, when another upstream continued it)
    would otherwise change in the middle of the stream. Read and written only for a continuation.
    """
    body = orjson.loads(chunk.raw)
    changed = {name: value for name, value in names.items() if name in body and body[name] != value}
    if not changed:
        return chunk
    body.update(changed)
    return dataclasses.replace(chunk, raw=orjson.dumps(body))


def _close(source: AsyncIterable[Sequence[Chunk]]) -> None:
    """Close `source`'s upstream request, if it is one (closing is idempotent: its owner closes it again)."""
    if isinstance(source, UpstreamStream):
        source.close()


def _silent_after_finishing(failure: BaseException) -> bool:
    """True for the idle timeout `_watched` raises: after the finish, the answer was whole."""
    return isinstance(failure, UpstreamError) and failure.code == "idle_timeout"


def _summed(chunk: Chunk, before: int) -> Chunk:
    """The continuation's usage chunk, as one request would have counted it.

    The `before` tokens relayed ahead of it count as completion, and not also as the prompt their
    prefill made them: the prompt is the original request's.
    """
    usage: dict[str, Any] = dict(chunk.usage or {})
    completion = usage.get("completion_tokens")
    if isinstance(completion, int):
        usage["completion_tokens"] = completion + before
        prompt = usage.get("prompt_tokens")
        if isinstance(prompt, int):
            prompt = usage["prompt_tokens"] = max(prompt - before, 0)
        usage["total_tokens"] = usage["completion_tokens"] + (prompt if isinstance(prompt, int) else 0)
    usage["sluice_continued"] = True
    body = orjson.loads(chunk.raw)
    body["usage"] = usage
    # Everything else the chunk says stays: a finish on the same chunk still finishes its choice.
    return dataclasses.replace(chunk, raw=orjson.dumps(body), usage=usage)


def _finish_chunk(template: bytes, reason: str) -> Chunk:
    """Choice 0's finish chunk as an upstream writes it: `template`'s id, model, created..., an empty delta."""
    body = orjson.loads(template)
    body["choices"] = [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason}]
    if "usage" in body:
        body["usage"] = None
    return Chunk(orjson.dumps(body), finish_reason=reason, finished_choices=(0,), choices_seen=1)
