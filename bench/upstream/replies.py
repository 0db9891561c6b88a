"""What the bench upstream answers: the plan of a request, and its reply as pre-encoded bytes.

Chunks are built by the simulator's own templates (server/simulator/wire.py), so they are its
bytes exactly apart from the words, and the gateway parses the same JSON it would from the
simulator. Stream events are framed as HTTP/1.1 chunks here, once, so sending one is a single
`transport.write`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from server.simulator.wire import DONE_EVENT, StreamFrames, completion_body

WORDS = ("the", "river", "flows", "past", "a", "quiet", "mill", "where", "water", "turns", "old", "stone")
FIRST_JSON = tuple(json.dumps(word).encode() for word in WORDS)
REST_JSON = tuple(json.dumps(" " + word).encode() for word in WORDS)
DIRECTIVE = "#sim"
LAST_CHUNK = b"0\r\n\r\n"


@dataclass(frozen=True, slots=True)
class Plan:
    """How to answer one chat request."""

    stream: bool
    include_usage: bool
    model: str
    tokens: int = 16
    ttft_ms: float = 0.0
    gap_ms: float = 0.0


def plan_for(body: dict[str, Any]) -> Plan:
    """Read the steering (`sim` field, else a `#sim` line in the last user message) of a request body."""
    steering: dict[str, Any] = body.get("sim") or _directive(body.get("messages"))
    options = body.get("stream_options")
    return Plan(
        stream=body.get("stream") is True,
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
        model=str(body.get("model", "bench")),
        tokens=int(steering.get("tokens", 16)),
        ttft_ms=float(steering.get("ttft_ms", 0.0)),
        gap_ms=float(steering.get("gap_ms", 0.0)),
    )


def _directive(messages: Any) -> dict[str, str]:
    if not isinstance(messages, list):
        return {}
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user" and isinstance(message.get("content"), str):
            for line in message["content"].split("\n"):
                if line.startswith(DIRECTIVE + " "):
                    pairs = (word.partition("=") for word in line.split()[1:])
                    return {key: value for key, _, value in pairs}
            return {}
    return {}


def http_chunk(data: bytes) -> bytes:
    """`data` framed as one HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class Frames:
    """The HTTP-framed SSE events of one streamed completion: the simulator's bytes, framed once."""

    __slots__ = ("_frames",)

    def __init__(self, completion_id: str, created: int, model: str, include_usage: bool) -> None:
        self._frames = StreamFrames(completion_id, created, model, include_usage)

    def role(self) -> bytes:
        """The opening event announcing the assistant."""
        return http_chunk(self._frames.role())

    def content(self, index: int) -> bytes:
        """Content token number `index`."""
        words = REST_JSON if index else FIRST_JSON
        return http_chunk(self._frames.content(words[index % len(words)]))

    def ending(self, tokens: int, include_usage: bool) -> bytes:
        """The finish event, the usage event when asked for, `[DONE]`, and the end of the body."""
        parts = [http_chunk(self._frames.finish("stop"))]
        if include_usage:
            token_usage = usage_of(tokens)
            parts.append(http_chunk(self._frames.usage(token_usage["prompt_tokens"], token_usage["completion_tokens"])))
        parts.append(http_chunk(DONE_EVENT))
        parts.append(LAST_CHUNK)
        return b"".join(parts)


def usage_of(tokens: int) -> dict[str, int]:
    """The usage object of a reply of `tokens` tokens to a short prompt."""
    return {"prompt_tokens": 8, "completion_tokens": tokens, "total_tokens": 8 + tokens}


def completion(completion_id: str, created: int, plan: Plan) -> bytes:
    """A whole non-streamed chat.completion."""
    words = [WORDS[i % len(WORDS)] for i in range(plan.tokens)]
    return completion_body(completion_id, created, plan.model, " ".join(words), "stop", usage_of(plan.tokens))
