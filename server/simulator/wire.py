"""Byte-exact OpenAI wire formats: SSE chunk frames and JSON bodies.

A stream's frames share everything except the delta, so the constant parts
are rendered once per request and each content event is a single
concatenation of pre-encoded bytes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from .script import json_string

SYSTEM_FINGERPRINT = "fp_sim"
DONE_EVENT = b"data: [DONE]\n\n"
MALFORMED_EVENT = b'data: {"id": oops not json\n\n'
ERROR_EVENT = (
    b'data: {"error":{"message":"simulated upstream failure","type":"server_error",'
    b'"param":null,"code":"upstream_failed"}}\n\n'
)
# Errors as other OpenAI-compatible providers send them mid-stream, each with the same message.
ERROR_TEXT_EVENT = b'data: {"error":"simulated upstream failure"}\n\n'
ERROR_BARE_EVENT = b'data: {"error":{"message":"simulated upstream failure"}}\n\n'
ERROR_NAMED_EVENT = b'event: error\ndata: {"message":"simulated upstream failure","type":"server_error"}\n\n'
ERROR_OBJECT_EVENT = (
    b'data: {"object":"error","message":"simulated upstream failure","type":"InternalServerError",'
    b'"param":null,"code":500}\n\n'
)


class StreamFrames:
    """The SSE events of one streamed chat completion, for its choice `index`.

    With several choices (OpenAI's `n`) each has its own frames; their usage
    events are the same.
    """

    __slots__ = (
        "_choice_close",
        "_choice_head",
        "_content_head",
        "_content_tail",
        "_usage_head",
    )

    def __init__(self, completion_id: str, created: int, model: str, include_usage: bool, index: int = 0) -> None:
        header = (
            f'data: {{"id":{json_string(completion_id).decode()},'
            f'"object":"chat.completion.chunk","created":{created},'
            f'"model":{json_string(model).decode()},'
            f'"system_fingerprint":"{SYSTEM_FINGERPRINT}","choices":'
        ).encode()
        # With include_usage, OpenAI puts "usage":null on every ordinary chunk.
        usage_null = b',"usage":null' if include_usage else b""
        self._choice_head = header + b'[{"index":%d,"delta":' % index
        self._choice_close = b"}]" + usage_null + b"}\n\n"
        self._content_head = self._choice_head + b'{"content":'
        self._content_tail = b'},"logprobs":null,"finish_reason":null' + self._choice_close
        self._usage_head = header + b'[],"usage":'

    def role(self) -> bytes:
        """The opening event announcing the assistant role."""
        return (
            self._choice_head
            + b'{"role":"assistant","content":"","refusal":null}'
            + b',"logprobs":null,"finish_reason":null'
            + self._choice_close
        )

    def content(self, json_piece: bytes) -> bytes:
        """One content delta; json_piece is an encoded JSON string literal."""
        return self._content_head + json_piece + self._content_tail

    def finish(self, reason: str) -> bytes:
        """The empty delta that carries the finish reason."""
        return self._choice_head + b'{},"logprobs":null,"finish_reason":' + json_string(reason) + self._choice_close

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """The trailing usage event (only sent when include_usage is set)."""
        return self._usage_head + _dumps(usage(prompt_tokens, completion_tokens)) + b"}\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The OpenAI usage object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_body(
    completion_id: str,
    created: int,
    model: str,
    content: str,
    finish_reason: str,
    token_usage: dict[str, int],
) -> bytes:
    """A whole non-streamed chat.completion object with one choice."""
    return choices_body(completion_id, created, model, (content,), finish_reason, token_usage)


def choices_body(
    completion_id: str,
    created: int,
    model: str,
    contents: Sequence[str],
    finish_reason: str,
    token_usage: dict[str, int],
) -> bytes:
    """A whole non-streamed chat.completion object: choice i says contents[i] (OpenAI's `n`)."""
    return _dumps(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [_choice(index, content, finish_reason) for index, content in enumerate(contents)],
            "usage": token_usage,
        }
    )


def _choice(index: int, content: str, finish_reason: str) -> dict[str, object]:
    message: dict[str, object] = {
        "role": "assistant",
        "content": content,
        "refusal": None,
        "annotations": [],
    }
    return {
        "index": index,
        "message": message,
        "logprobs": None,
        "finish_reason": finish_reason,
    }


def error_body(message: str, error_type: str, param: str | None, code: str | None) -> bytes:
    """An OpenAI error object."""
    return _dumps(
        {
            "error": {
                "message": message,
                "type": error_type,
                "param": param,
                "code": code,
            }
        }
    )


def _dumps(value: object) -> bytes:
    """Compact JSON in UTF-8, falling back to \\u escapes for lone surrogates."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":")).encode()
