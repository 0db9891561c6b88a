"""Read and validate request bodies at the edge; every failure becomes an InvalidRequestError.

Handlers get a typed object or a checked dict, never raw input, and every message names its field.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from .errors import InvalidRequestError, UnsupportedMediaTypeError
from .openai_schema import load_schema
from .settings import Settings

ModelT = TypeVar("ModelT", bound=BaseModel)

# orjson reads JSON nested up to 1,024 levels but writes no more than 254, and the body is written
# again to go upstream: a body between the two was accepted here and failed there, a 500. Tool
# schemas, the deepest part of a real request, stay far below this.
MAX_DEPTH = 128

# The most tokens a completion may ask for (`max_tokens`, `max_completion_tokens`): 2^31 - 1, the
# largest 32-bit signed integer. OpenAI's schema sets no maximum and its models stop far below
# this (six figures at most), so every value OpenAI accepts stays valid. Times `n` (128 at most)
# it keeps a key's reservation below 2^38, where the token bucket's float arithmetic is exact
# (below 2^53): `1e308`, reserved then given back, cancelled to 0 and emptied the bucket, and its
# reset header overflowed (the reply was cut off).
MAX_TOKEN_LIMIT = 2**31 - 1


def _schema_maximum(field: str) -> int:
    """The `maximum` OpenAI's own request schema (openai_schema/) gives a top-level field."""
    for part in json.loads(load_schema())["allOf"]:
        bounds = part.get("properties", {}).get(field)
        if bounds is not None:
            return int(bounds["maximum"])
    raise LookupError(f"OpenAI's chat request schema has no {field!r}")


# OpenAI's maximum of `n` (128), the choices a request may ask for.
MAX_CHOICES = _schema_maximum("n")

# The counts a key's limits are reserved from (auth/gate.py), with their largest values.
COUNT_FIELDS = {"max_tokens": MAX_TOKEN_LIMIT, "max_completion_tokens": MAX_TOKEN_LIMIT, "n": MAX_CHOICES}


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object: 415 for another content type, 400 for bad JSON, a non-object or a
    count over its maximum (`check_counts`)."""
    # The header itself first: aiohttp's `content_type` parses it into a dict kept on the request,
    # about 0.9 KiB of every live stream. Anything but a plain JSON type gets aiohttp's own parse.
    if (
        _mime(request.headers.get("Content-Type", "")) != "application/json"
        and request.content_type != "application/json"
    ):
        # As sent: aiohttp's `content_type` says application/octet-stream for none or an empty one.
        sent = request.headers.get("Content-Type", "").strip()
        raise UnsupportedMediaTypeError(
            f"Content-Type must be application/json, not {sent[:100]!r}."
            if sent
            else "Content-Type must be application/json; the request has none."
        )
    raw = await request.read()
    if not raw.strip():
        raise InvalidRequestError("The request body is empty; expected a JSON object.", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            if "surrogate" not in str(exc):
                raise
            body = orjson.loads(_LONE_SURROGATE.sub(_replace_lone_surrogate, raw))
        except orjson.JSONDecodeError as final:
            raise InvalidRequestError(f"The request body is not valid JSON: {final}.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.", code="invalid_json")
    # Only a body with that many brackets can be nested that deep: counting them costs next to
    # nothing, walking the body does not.
    if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and _deeper_than(body, MAX_DEPTH):
        raise InvalidRequestError(f"The request body is nested more than {MAX_DEPTH} levels deep.", code="invalid_json")
    check_counts(body)
    return body


def check_counts(body: dict[str, Any]) -> None:
    """400 naming the field for a count (`COUNT_FIELDS`) over its maximum; a whole float becomes its int.

    Every body read here is a chat request's (/v1/chat/completions, /chat, /chat/stream,
    /chat/streams), and a key's tokens are reserved from these counts: checked here, before any
    route's own checks, no route can forget them. `5000.0` is an integer to JSON Schema and is
    reserved as 5000 (auth/gate.py): it goes upstream as `5000`, what was reserved, which no
    upstream reads otherwise (`"n": 3.0` was reserved as one choice and went up as 3.0, which a
    lenient upstream reads as 3). A fraction, a wrong type and a count below its minimum are left
    to each route's own checks (OpenAI's schema, /chat's model).
    """
    for name, maximum in COUNT_FIELDS.items():
        value = body.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if value > maximum:
            raise InvalidRequestError(f"{name}: {value} is greater than the maximum of {maximum}.", param=name)
        if isinstance(value, float) and value.is_integer():
            body[name] = int(value)


# An escaped backslash (skipped whole, so `\\ud83d` stays text), a surrogate pair, or a lone half.
_LONE_SURROGATE = re.compile(
    rb"\\\\|\\u[dD][89abAB][0-9a-fA-F]{2}(?:\\u[dD][c-fC-F][0-9a-fA-F]{2})?|\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


def _replace_lone_surrogate(match: re.Match[bytes]) -> bytes:
    """U+FFFD for half of a surrogate pair; anything else as it was.

    JavaScript's `JSON.stringify` writes a string cut between the halves of an emoji (by UTF-16
    length) with a lone `\\ud83d`, which JSON's grammar allows and Python's `json` reads; orjson
    refuses it, and the client would get a 400 for half a character. It becomes the replacement
    character, as a UTF-8 decoder does with a broken sequence.
    """
    text = match.group()
    return text if text == rb"\\" or len(text) == 12 else rb"\ufffd"


def _deeper_than(body: dict[str, Any], limit: int) -> bool:
    """True when objects and arrays nest more than `limit` levels (the body itself is level 1).

    Level by level, in comprehensions, skipping empty containers (which hold nothing deeper): a
    walk of every node one by one took 5 s for 16 MiB of `{}`s, the whole process frozen meanwhile,
    where parsing them takes 0.4 s; this takes about as long as the parse.
    """
    level: list[Any] = [body]  # the non-empty containers at the current depth
    for _ in range(1, limit):
        level = [c for v in level for c in (v.values() if type(v) is dict else v) if c and type(c) in _CONTAINERS]
        if not level:
            return False
    # Any container inside one at depth `limit`, even an empty one, is deeper.
    return any(type(c) in _CONTAINERS for v in level for c in (v.values() if type(v) is dict else v))


_CONTAINERS = (dict, list)


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


def requested_choices(body: dict[str, Any]) -> int:
    """A validated chat body's `n`: how many choices it asks for (1 when absent).

    A whole float counts as its integer, as `check_counts` makes it: `3.0` asks for 3 choices.
    """
    n = body.get("n")
    if isinstance(n, float) and n.is_integer():
        n = int(n)
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1
