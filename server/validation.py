"""Read and validate request bodies at the edge; every failure becomes an InvalidRequestError.

Handlers get a typed object or a checked dict, never raw input, and every message names its field.
"""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from .errors import InvalidRequestError, UnsupportedMediaTypeError
from .settings import Settings

ModelT = TypeVar("ModelT", bound=BaseModel)


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object: 415 for another content type, 400 for bad JSON or a non-object."""
    # The header itself first: aiohttp's `content_type` parses it into a dict kept on the request,
    # about 0.9 KiB of every live stream. Anything but a plain JSON type gets aiohttp's own parse.
    if (
        _mime(request.headers.get("Content-Type", "")) != "application/json"
        and request.content_type != "application/json"
    ):
        raise UnsupportedMediaTypeError(
            f"Content-Type must be application/json, not {request.content_type or 'missing'!r}."
        )
    raw = await request.read()
    if not raw.strip():
        raise InvalidRequestError("The request body is empty; expected a JSON object.", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"The request body is not valid JSON: {exc}.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.", code="invalid_json")
    return body


def _mime(content_type: str) -> str:
    """`type/subtype` of a Content-Type header, lower-case, without its parameters."""
    return content_type.partition(";")[0].strip().lower()


def parse_model(model: type[ModelT], data: dict[str, Any], settings: Settings) -> ModelT:
    """Validate `data` into `model`; the first problem becomes a 400 naming its field."""
    try:
        return model.model_validate(data, context={"settings": settings})
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        param = _field_path(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        raise InvalidRequestError(f"{param or 'body'}: {message}.", param=param or None) from None


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path
