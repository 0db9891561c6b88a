"""Read an upstream's SSE body into chat-completion chunks, keeping each chunk's bytes as received."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

DONE = b"[DONE]"


@dataclass(slots=True)
class Chunk:
    """One upstream event: its payload bytes as received and what the relay needs from them."""

    raw: bytes
    content: str | None = None
    has_delta: bool = False
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    done: bool = False


class MalformedChunk(ValueError):
    """An upstream event whose data is not a JSON object."""


async def iter_event_data(lines: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """Yield the data of each SSE event; comments, `event:`, `id:` and `retry:` lines are ignored."""
    data: list[bytes] = []
    async for line in lines:
        line = line.rstrip(b"\r\n")
        if not line:
            if data:
                yield data[0] if len(data) == 1 else b"\n".join(data)
                data = []
            continue
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
    if data:
        # The body ended without the blank line that closes an event: the event still counts.
        yield data[0] if len(data) == 1 else b"\n".join(data)


def parse_chunk(raw: bytes) -> Chunk:
    """Interpret one event's data; raise MalformedChunk when it is not a JSON object."""
    if raw == DONE:
        return Chunk(raw, done=True)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedChunk(str(exc)) from None
    if not isinstance(body, dict):
        raise MalformedChunk("chunk is not a JSON object")
    chunk = Chunk(raw)
    error = body.get("error")
    if isinstance(error, dict):
        chunk.error = error
        return chunk
    usage = body.get("usage")
    if isinstance(usage, dict):
        chunk.usage = usage
    choices = body.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                content = delta.get("content")
                if isinstance(content, str) and content:
                    chunk.content = content if chunk.content is None else chunk.content + content
                    chunk.has_delta = True
                elif delta.get("tool_calls") or delta.get("refusal") or delta.get("function_call"):
                    chunk.has_delta = True
            reason = choice.get("finish_reason")
            if isinstance(reason, str):
                chunk.finish_reason = reason
    return chunk
