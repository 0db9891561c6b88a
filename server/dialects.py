"""Encode a relay's events for the client: the OpenAI dialect and Sluice's native dialect.

Both frame every payload as JSON on one `data:` line, so no token text (`\\n\\n`, `\\r`,
`data: [DONE]`, `event: x`) can end an event early or forge one.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from .chunks import Chunk
from .errors import GatewayError

OPENAI_DONE = b"data: [DONE]\n\n"


class Dialect(Protocol):
    """How one stream's events look on the wire."""

    def start(self) -> bytes:
        """Bytes sent right after the headers (may be empty)."""

    def chunk(self, chunk: Chunk) -> bytes | None:
        """The event for one upstream chunk, or None to send nothing."""

    def done(self, finish_reason: str, usage: dict[str, Any] | None) -> bytes:
        """The final event of a stream that finished."""

    def answered_by(self, model: str, upstream: str) -> None:
        """Note which model, at which upstream, answered (after retries and fallbacks)."""

    def failure(self, error: GatewayError, *, retry_ms: int | None = None) -> bytes:
        """The final event of a stream that failed; `retry_ms` hints when to come back."""


class OpenAIDialect:
    """`data: {chat.completion.chunk}` events as the upstream sent them, then `data: [DONE]`.

    No `id:`, `event:` or `retry:` lines: the OpenAI SDKs reject some of them. The upstream is
    always asked for usage; its usage-only chunk reaches the client only if the client asked.
    """

    __slots__ = ("include_usage",)

    def __init__(self, include_usage: bool) -> None:
        self.include_usage = include_usage

    def start(self) -> bytes:
        return b""

    def chunk(self, chunk: Chunk) -> bytes | None:
        if (
            not self.include_usage
            and chunk.usage is not None
            and not (chunk.has_delta or chunk.other_delta)
            and chunk.finish_reason is None
        ):
            return None
        raw = chunk.raw
        if raw.find(b"\n") >= 0 or raw.find(b"\r") >= 0:  # `find`: see chunks.EventSplitter.feed
            # A multi-line or oddly spaced payload is re-encoded onto one line.
            raw = orjson.dumps(orjson.loads(raw))
        return b"data: " + raw + b"\n\n"

    def done(self, finish_reason: str, usage: dict[str, Any] | None) -> bytes:
        return OPENAI_DONE

    def answered_by(self, model: str, upstream: str) -> None:
        pass  # every chunk already carries the model that answered, as the upstream wrote it

    def failure(self, error: GatewayError, *, retry_ms: int | None = None) -> bytes:
        # The SDKs raise APIError on exactly this shape; no retry hint exists in this dialect.
        return b"data: " + orjson.dumps(error.body()) + b"\n\n"


class NativeDialect:
    """Sluice's own events: `token`, then `done` or `failed`, each with `id: <stream>:<seq>`.

    A `token` carries the answer's text: a chunk without content (a role, tool calls, a model's
    reasoning or audio) sends nothing. While a model reasons, heartbeat comments keep the
    connection alive; its reasoning reaches only `/v1` clients. The failure event is not named
    `error`: EventSource fires `onerror` for transport errors too.
    """

    __slots__ = ("_answered", "_prefix", "_retry_ms", "seq")

    def __init__(self, stream_id: str, retry_ms: int, seq: int = 0) -> None:
        self._prefix = b"id: " + stream_id.encode() + b":"
        self._retry_ms = retry_ms
        self._answered: dict[str, str] = {}
        self.seq = seq

    def _event(self, name: bytes, payload: object) -> bytes:
        self.seq += 1
        return b"%s%d\nevent: %s\ndata: %s\n\n" % (self._prefix, self.seq, name, orjson.dumps(payload))

    def start(self) -> bytes:
        return b"retry: " + str(self._retry_ms).encode() + b"\n\n"

    def chunk(self, chunk: Chunk) -> bytes | None:
        if not chunk.content:
            return None
        # The hot path: the payload {"content": ...} written around orjson's string literal.
        self.seq += 1
        return b'%s%d\nevent: token\ndata: {"content":%s}\n\n' % (self._prefix, self.seq, orjson.dumps(chunk.content))

    def done(self, finish_reason: str, usage: dict[str, Any] | None) -> bytes:
        return self._event(b"done", {"finish_reason": finish_reason, "usage": usage, **self._answered})

    def answered_by(self, model: str, upstream: str) -> None:
        self._answered = {"model": model, "upstream": upstream}

    def failure(self, error: GatewayError, *, retry_ms: int | None = None) -> bytes:
        event = self._event(b"failed", error.body())
        if retry_ms is not None:
            event = b"retry: " + str(retry_ms).encode() + b"\n" + event
        return event
