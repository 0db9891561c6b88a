"""Validation of an OpenAI chat completion request body.

Only the fields the simulator acts on are read; everything else is ignored,
as a lenient upstream would.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# OpenAI's bounds on `n`, the number of choices to generate.
MAX_CHOICES = 128


class BadRequest(ValueError):
    """The body is not a usable chat request; maps to HTTP 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """The parts of a chat completion request the simulator uses."""

    model: str
    # Every string content and every text part, in order.
    contents: tuple[str, ...]
    last_user_text: str | None
    last_role: str | None
    stream: bool
    include_usage: bool
    max_tokens: int | None
    # OpenAI's `n`: how many choices to answer with (1 when absent).
    n: int
    sim: Mapping[str, object]


def parse_chat_request(raw: bytes) -> ChatRequest:
    """Decode and validate a request body."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty array", "messages")
    contents: list[str] = []
    last_user_text: str | None = None
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest("each message must be an object", f"messages[{index}]")
        parts = _text_parts(message.get("content"), index)
        contents.extend(parts)
        if message.get("role") == "user":
            last_user_text = "".join(parts)
    stream_options = body.get("stream_options")
    stream = body.get("stream") is True
    sim = body.get("sim")
    if sim is not None and not isinstance(sim, dict):
        raise BadRequest("sim must be an object", "sim")
    return ChatRequest(
        model=model,
        contents=tuple(contents),
        last_user_text=last_user_text,
        last_role=str(messages[-1].get("role")),
        stream=stream,
        include_usage=stream and isinstance(stream_options, dict) and stream_options.get("include_usage") is True,
        max_tokens=_max_tokens(body),
        n=_choice_count(body),
        sim=sim or {},
    )


def _text_parts(content: Any, index: int) -> list[str]:
    """Text of a message: a string, or the text parts of a content list."""
    if content is None:
        # Assistant turns that only carry tool calls have no content.
        return []
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        ]
    raise BadRequest("content must be a string or an array", f"messages[{index}].content")


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    # max_completion_tokens is the newer name and supersedes max_tokens.
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadRequest(f"{name} must be a positive integer", name)
        return value
    return None


def _choice_count(body: Mapping[str, Any]) -> int:
    value = body.get("n")
    if value is None:
        return 1
    # bool is an int subclass, but `"n": true` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CHOICES:
        raise BadRequest(f"n must be an integer from 1 to {MAX_CHOICES}", "n")
    return value
