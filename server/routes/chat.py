"""The original API: POST /chat and POST /chat/stream (Sluice's native SSE dialect)."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from ..chat_call import complete_chat, stream_chat
from ..dialects import NativeDialect
from ..errors import UpstreamError
from ..guard import Outcome
from ..keys import RECORD, REQUEST_ID, SETTINGS
from ..middleware.auth import check_model_for, default_model
from ..schemas import ChatReply, ChatRequest, Usage
from ..upstreams.failures import malformed_reply
from ..validation import parse_model, read_json_object


async def _chat_request(request: web.Request) -> tuple[ChatRequest, str]:
    settings = request.app[SETTINGS]
    chat_request = parse_model(ChatRequest, await read_json_object(request), settings)
    model = check_model_for(request, chat_request.model or default_model(request))
    request[RECORD].model = model
    return chat_request, model


async def chat(request: web.Request) -> web.Response:
    """Answer a message in one reply, with token usage."""
    chat_request, model = await _chat_request(request)
    raw = await complete_chat(request, chat_request.upstream_body(model, stream=False))
    try:
        reply = _reply_from_upstream(raw, model)
    except UpstreamError as failure:
        # After the routing said completed: the access line and metrics must say what the client got.
        record = request[RECORD]
        record.outcome, record.error_code = Outcome.UPSTREAM_ERROR, failure.code
        raise
    return web.json_response(body=reply.model_dump_json().encode(), content_type="application/json")


async def chat_stream(request: web.Request) -> web.StreamResponse:
    """Stream the reply as `token` events, then `done` with finish reason and usage."""
    chat_request, model = await _chat_request(request)
    dialect = NativeDialect(request[REQUEST_ID], request.app[SETTINGS].stream.retry_ms)
    return await stream_chat(request, chat_request.upstream_body(model, stream=True), dialect)


def _reply_from_upstream(raw: bytes, model: str) -> ChatReply:
    """Reduce an upstream chat.completion to the original API's reply."""
    try:
        body: Any = orjson.loads(raw)
        choice = body["choices"][0]
        usage = body.get("usage") or {}
        return ChatReply(
            response=choice["message"].get("content") or "",
            model=body.get("model") or model,
            finish_reason=choice.get("finish_reason") or "stop",
            # A provider's null counts are no counts: 0, as for one it left out.
            usage=Usage(
                prompt_tokens=usage.get("prompt_tokens") or 0,
                completion_tokens=usage.get("completion_tokens") or 0,
                total_tokens=usage.get("total_tokens") or 0,
            ),
        )
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError, ValidationError):
        raise malformed_reply() from None
