"""What the bench upstream answers: the plan of a request, and its reply as pre-encoded bytes.

Chunks have the simulator's shape (server/simulator/wire.py) byte for byte apart from the words,
so the gateway parses the same JSON it would from the simulator. Stream events are framed as
HTTP/1.1 chunks here, once, so sending one is a single `transport.write`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

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
    """The HTTP-framed SSE events of one streamed completion."""

    __slots__ = ("_choice_close", "_choice_head", "_content_head", "_content_tail", "_usage_head")

    def __init__(self, completion_id: str, created: int, model: str, include_usage: bool) -> None:
        header = (
            f'data: {{"id":{json.dumps(completion_id)},"object":"chat.completion.chunk","created":{created},'
            f'"model":{json.dumps(model)},"system_fingerprint":"fp_sim","choices":'
        ).encode()
        usage_null = b',"usage":null' if include_usage else b""
        self._choice_head = header + b'[{"index":0,"delta":'
        self._choice_close = b"}]" + usage_null + b"}\n\n"
        self._content_head = self._choice_head + b'{"content":'
        self._content_tail = b'},"logprobs":null,"finish_reason":null' + self._choice_close
        self._usage_head = header + b'[],"usage":'

    def role(self) -> bytes:
        """The opening event announcing the assistant."""
        return http_chunk(
            self._choice_head
            + b'{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null'
            + self._choice_close
        )

    def content(self, index: int) -> bytes:
        """Content token number `index`."""
        words = REST_JSON if index else FIRST_JSON
        return http_chunk(self._content_head + words[index % len(words)] + self._content_tail)

    def ending(self, tokens: int, include_usage: bool) -> bytes:
        """The finish event, the usage event when asked for, `[DONE]`, and the end of the body."""
        finish = self._choice_head + b'{},"logprobs":null,"finish_reason":"stop"' + self._choice_close
        parts = [http_chunk(finish)]
        if include_usage:
            usage = json.dumps(usage_of(tokens), separators=(",", ":")).encode()
            parts.append(http_chunk(self._usage_head + usage + b"}\n\n"))
        parts.append(http_chunk(b"data: [DONE]\n\n"))
        parts.append(LAST_CHUNK)
        return b"".join(parts)


def usage_of(tokens: int) -> dict[str, int]:
    """The usage object of a reply of `tokens` tokens to a short prompt."""
    return {"prompt_tokens": 8, "completion_tokens": tokens, "total_tokens": 8 + tokens}


def completion(completion_id: str, created: int, plan: Plan) -> bytes:
    """A whole non-streamed chat.completion."""
    words = [WORDS[i % len(WORDS)] for i in range(plan.tokens)]
    body = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": plan.model,
        "system_fingerprint": "fp_sim",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": " ".join(words), "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": usage_of(plan.tokens),
    }
    return json.dumps(body, separators=(",", ":")).encode()
