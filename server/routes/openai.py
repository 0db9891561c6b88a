"""The OpenAI surface under /v1: the official SDKs work with `base_url` pointed here.

Bodies are validated against OpenAI's own schema for createChatCompletion; fields Sluice does
not know pass through to the upstream untouched.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..chat_call import complete_chat, stream_chat
from ..dialects import OpenAIDialect
from ..errors import InvalidRequestError
from ..keys import CHAT_SCHEMA, RECORD
from ..middleware.auth import check_model_for, visible_models
from ..upstreams.portable import asking_usage
from ..validation import read_json_object

# OpenAI's `created` for models Sluice lists; the upstream's own value is not fetched.
MODELS_CREATED = 1_700_000_000


def _model_object(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": MODELS_CREATED, "owned_by": "sluice"}


async def list_models(request: web.Request) -> web.Response:
    """GET /v1/models: the served models and aliases the caller may use, as OpenAI lists them."""
    return web.json_response({"object": "list", "data": [_model_object(m) for m in visible_models(request)]})


async def get_model(request: web.Request) -> web.Response:
    """GET /v1/models/{id}: one model a request may name, or 404 model_not_found."""
    model_id = request.match_info["model_id"]
    check_model_for(request, model_id, listed_at="/v1/models")
    return web.json_response(_model_object(model_id))


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions, streaming (`"stream": true`) or not."""
    body = await read_json_object(request)
    issue = request.app[CHAT_SCHEMA].first_error(body)
    if issue is not None:
        raise InvalidRequestError(issue.message, param=issue.param or None)
    _check_max_tokens(body)
    # An alias becomes the real model here: the upstream is asked for it and the reply names it.
    model = check_model_for(request, body["model"], listed_at="/v1/models")
    body["model"] = model
    request[RECORD].model = model
    if body.get("stream") is True:
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        # Always ask for usage, so every stream's tokens are logged; the client sees it only if asked.
        # A portable upstream gets the client's own options instead (upstreams/portable.py).
        upstream_body = {**body, "stream_options": asking_usage(body)}
        return await stream_chat(request, upstream_body, OpenAIDialect(include_usage))
    raw = await complete_chat(request, body)
    return web.Response(body=raw, content_type="application/json")


def _check_max_tokens(body: dict[str, Any]) -> None:
    """400 for a token limit of 0 or below, as /chat answers: the upstream would reject it or ignore it.

    The schema has already refused a fraction; `-1.0` is an integer to JSON Schema, so floats count too.
    """
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0:
            raise InvalidRequestError(f"{name}: Input should be greater than 0.", param=name)
