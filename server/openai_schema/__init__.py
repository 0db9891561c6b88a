"""Validate ``POST /v1/chat/completions`` bodies against OpenAI's own request schema.

The schema (``create_chat_completion_request.json``) is generated from the official
OpenAPI description by ``python -m tools.extract_openai_schema``; see that module.
Unknown top-level parameters are accepted (the spec does not close the object), and
validation never touches the body: callers keep forwarding the original dict.

Usage::

    validator = ChatCompletionValidator()      # once, at startup (compiles the schema)
    issue = validator.first_error(body)        # per request; None when valid
    if issue is not None:
        ...  # 400 invalid_request_error with issue.message / issue.param
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import jsonschema_rs
from jsonschema_rs import ValidationError, ValidationErrorKind

__all__ = ["SCHEMA_RESOURCE", "ChatCompletionValidator", "SchemaIssue", "load_schema"]

SCHEMA_RESOURCE = "create_chat_completion_request.json"

_MAX_MESSAGE = 300
_MAX_VALUE = 40
_MAX_KEY = 40
_MAX_OPTIONS = 8
_ROOT_LABEL = "request body"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

_Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class SchemaIssue:
    """The one problem reported for an invalid body.

    ``message``: short, human, starts with the offending field (< 300 chars, values truncated).
    ``param``: the field as ``messages[0].role`` ("" for the body itself); for a missing
    required property this is the missing property's path (OpenAI's ``param`` convention).
    ``keyword``: the JSON Schema keyword that failed (``required``, ``type``, ``enum``,
    ``maximum``, ``oneOf``, ...), handy for choosing an OpenAI error ``code``.
    """

    message: str
    param: str
    keyword: str = ""


@cache
def load_schema() -> str:
    """The schema's JSON text, read once from the package data."""
    return resources.files(__package__).joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")


class ChatCompletionValidator:
    """Compiled ``CreateChatCompletionRequest`` schema. Build once (~6 ms) and share it."""

    def __init__(self, schema: dict[str, Any] | None = None) -> None:
        self.schema: dict[str, Any] = schema if schema is not None else json.loads(load_schema())
        # Formats (e.g. "uri" on image_url.url) are annotations in 2020-12: keep them so.
        self._validator = jsonschema_rs.validator_for(self.schema, validate_formats=False)

    def is_valid(self, body: object) -> bool:
        try:
            return self._validator.is_valid(body)
        except ValueError:  # not JSON-like / nested too deeply for jsonschema_rs
            return False

    def first_error(self, body: object) -> SchemaIssue | None:
        """``None`` if ``body`` is a valid request, else the most useful single issue."""
        try:
            if self._validator.is_valid(body):  # fast path: no error objects built
                return None
            error = next(iter(self._validator.iter_errors(body)), None)
        except ValueError as exc:  # "Unsupported type", "Recursion limit reached"
            return SchemaIssue(_clip(f"{_ROOT_LABEL}: cannot be validated ({exc})"), "", "")
        if error is None:  # pragma: no cover - is_valid and iter_errors disagree
            return SchemaIssue(f"{_ROOT_LABEL}: invalid", "", "")
        return _resolve(error).to_issue(body)


# --------------------------------------------------------------------------- error selection
@dataclass(frozen=True, slots=True)
class _Found:
    """An error reduced to what we report; composite errors resolve to one of these."""

    path: _Path  # where the message points
    keyword: str
    text: str  # message without the path prefix
    param: _Path | None = None  # defaults to ``path``
    types: tuple[str, ...] = ()  # keyword == "type": expected types
    value: Any = None  # offending instance (type/enum), for merging branches
    options: tuple[Any, ...] = field(default=())  # keyword == "enum"/"const"

    def to_issue(self, body: object) -> SchemaIssue:
        path = _restore_keys(body, self.path)
        param = path if self.param is None else _restore_keys(body, self.param)
        text = self.text
        if self.keyword == "type" and self.value is None:
            # jsonschema_rs rejects NaN/Infinity (json.loads accepts them) but reports them as null.
            actual = _lookup(body, path)
            if isinstance(actual, float) and not math.isfinite(actual):
                text = f"{actual!r} is not a valid JSON number"
        return SchemaIssue(_clip(f"{_label(path)}: {text}"), _format_path(param), self.keyword)


def _resolve(error: ValidationError) -> _Found:
    path = tuple(error.instance_path)
    kind = error.kind
    match kind:
        case ValidationErrorKind.AnyOf(context=ctx) | ValidationErrorKind.OneOfNotValid(context=ctx):
            return _resolve_branches(path, kind.name, ctx)
        case ValidationErrorKind.OneOfMultipleValid():
            return _Found(path, "oneOf", "matches more than one allowed shape")
        case ValidationErrorKind.Type(types=types):
            return _type_found(path, tuple(types), error.instance)
        case ValidationErrorKind.Enum(options=options):
            return _enum_found(path, "enum", tuple(options), error.instance)
        case ValidationErrorKind.Constant(expected_value=expected):
            return _enum_found(path, "const", (expected,), error.instance)
        case ValidationErrorKind.Required(property=prop):
            text = f"missing required property {_short(prop)}"
            return _Found(path, "required", text, param=(*path, prop))
        case ValidationErrorKind.AdditionalProperties(unexpected=unexpected):
            names = ", ".join(_short(n) for n in unexpected[:_MAX_OPTIONS])
            return _Found(path, "additionalProperties", f"unexpected properties: {names}")
        case ValidationErrorKind.Minimum(limit=limit):
            return _Found(
                path,
                "minimum",
                f"{_short(error.instance)} is less than the minimum of {_num(limit)}",
            )
        case ValidationErrorKind.Maximum(limit=limit):
            return _Found(
                path,
                "maximum",
                f"{_short(error.instance)} is greater than the maximum of {_num(limit)}",
            )
        case ValidationErrorKind.ExclusiveMinimum(limit=limit):
            return _Found(
                path,
                "exclusiveMinimum",
                f"{_short(error.instance)} must be greater than {_num(limit)}",
            )
        case ValidationErrorKind.ExclusiveMaximum(limit=limit):
            return _Found(
                path,
                "exclusiveMaximum",
                f"{_short(error.instance)} must be less than {_num(limit)}",
            )
        case ValidationErrorKind.MinItems(limit=limit):
            return _Found(
                path,
                "minItems",
                f"expected at least {limit} item(s), got {_size(error.instance)}",
            )
        case ValidationErrorKind.MaxItems(limit=limit):
            return _Found(
                path,
                "maxItems",
                f"expected at most {limit} item(s), got {_size(error.instance)}",
            )
        case ValidationErrorKind.MinLength(limit=limit):
            return _Found(
                path,
                "minLength",
                f"expected at least {limit} character(s), got {_size(error.instance)}",
            )
        case ValidationErrorKind.MaxLength(limit=limit):
            return _Found(
                path,
                "maxLength",
                f"expected at most {limit} character(s), got {_size(error.instance)}",
            )
        case _:
            # Rare keywords (pattern, format, ...): the library's text, clipped (it may embed the value).
            return _Found(path, kind.name, _clip(error.message, 200))


def _type_found(path: _Path, types: tuple[str, ...], instance: Any) -> _Found:
    expected = " or ".join(sorted(types, key=lambda t: t == "null"))  # "null" last
    return _Found(
        path,
        "type",
        f"expected {expected}, got {_describe(instance)}",
        types=types,
        value=instance,
    )


def _enum_found(path: _Path, keyword: str, options: tuple[Any, ...], instance: Any) -> _Found:
    shown = ", ".join(_short(o) for o in options[:_MAX_OPTIONS])
    more = f" (+{len(options) - _MAX_OPTIONS} more)" if len(options) > _MAX_OPTIONS else ""
    return _Found(
        path,
        keyword,
        f"{_short(instance)} is not one of {shown}{more}",
        value=instance,
        options=options,
    )


def _resolve_branches(path: _Path, keyword: str, context: list[list[ValidationError]]) -> _Found:
    """Pick the error that best explains an ``anyOf``/``oneOf`` failure at ``path``.

    Each branch is classified by its (recursively resolved) errors:
    * wrong type at ``path`` itself -> the value is not that kind of thing;
    * a single-valued enum/const mismatch one level down (``role``, ``type``) -> a
      discriminator says "not this variant";
    * anything else -> a *relevant* branch: the value was meant to be this variant.
    One relevant branch: report its error (the deepest, most specific one). Several:
    an error they all share, else the closest branch. None: report the discriminator
    (merging allowed values across variants) or the merged expected types.
    """
    relevant: list[list[_Found]] = []
    wrong_type: list[_Found] = []
    discriminators: list[_Found] = []
    for branch in context:
        found = [_resolve(e) for e in branch]
        if not found:
            continue
        type_miss = next((f for f in found if f.keyword == "type" and f.path == path), None)
        if type_miss is not None:
            wrong_type.append(type_miss)
            continue
        disc = next((f for f in found if _is_discriminator(f, path)), None)
        if disc is not None:
            discriminators.append(disc)
            continue
        relevant.append(found)

    if len(relevant) == 1:
        return _most_specific(relevant[0])
    if relevant:
        common = set.intersection(*({(f.path, f.keyword, f.text) for f in branch} for branch in relevant))
        for f in relevant[0]:
            if (f.path, f.keyword, f.text) in common:
                return f
        closest = min(
            relevant,
            key=lambda branch: (len(branch), -max(len(f.path) for f in branch)),
        )
        return _most_specific(closest)
    if discriminators:
        key_path, _ = Counter(d.path for d in discriminators).most_common(1)[0]
        same = [d for d in discriminators if d.path == key_path]
        options = tuple(dict.fromkeys(o for d in same for o in d.options if _hashable(o)))
        return _enum_found(key_path, "enum", options, same[0].value)
    if wrong_type:
        types = tuple(dict.fromkeys(t for f in wrong_type for t in f.types))
        return _type_found(path, types, wrong_type[0].value)
    return _Found(path, keyword, "does not match any allowed shape")


def _is_discriminator(found: _Found, path: _Path) -> bool:
    return (
        found.keyword in ("enum", "const")
        and len(found.options) == 1
        and len(found.path) == len(path) + 1
        and found.path[: len(path)] == path
        and isinstance(found.path[-1], str)
    )


def _most_specific(found: list[_Found]) -> _Found:
    """The deepest error of a branch (first one on ties, i.e. schema order)."""
    return max(found, key=lambda f: len(f.path if f.param is None else f.param))


# --------------------------------------------------------------------------- formatting
def _restore_keys(body: object, path: _Path) -> _Path:
    """jsonschema_rs reports digit-only object keys as ints ("50256" -> 50256, "007" -> 7).

    Walk the body to turn them back into the real keys, so ``logit_bias["50256"]`` is not
    shown as an array index.
    """
    out: list[str | int] = []
    node: Any = body
    for part in path:
        if isinstance(node, dict):
            key: str | int = part
            if isinstance(part, int):
                key = str(part)
                if key not in node:
                    key = next((k for k in node if _same_digits(k, part)), key)
            out.append(key)
            node = node.get(key) if isinstance(key, str) else None
        else:
            out.append(part)
            node = node[part] if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node) else None
    return tuple(out)


def _lookup(body: object, path: _Path) -> object:
    node: Any = body
    for part in path:
        if isinstance(node, dict) and isinstance(part, str):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            return None
    return node


def _same_digits(key: object, number: int) -> bool:
    return isinstance(key, str) and 0 < len(key) <= 20 and key.isascii() and key.isdigit() and int(key) == number


def _format_path(path: _Path) -> str:
    out: list[str] = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif _IDENTIFIER.match(part):
            out.append(f".{part}" if out else part)
        else:
            out.append(f"[{json.dumps(_clip(part, _MAX_KEY), ensure_ascii=False)}]")
    return "".join(out)


def _label(path: _Path) -> str:
    return _format_path(path) or _ROOT_LABEL


def _short(value: Any) -> str:
    if isinstance(value, str):
        return repr(_clip(value, _MAX_VALUE))
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return _clip(json.dumps(value), _MAX_VALUE)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {_short(value)}"
    if isinstance(value, (int, float)):
        return f"number {_short(value)}"
    if isinstance(value, str):
        return f"string {_short(value)}"
    return _short(value)  # "an object" / "an array"


def _num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e20:
        return str(int(value))  # 9.223372036854776e+18 -> 9223372036854775808
    return _short(value)


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, list, dict)) else 0


def _hashable(value: Any) -> bool:
    return not isinstance(value, (dict, list))


def _clip(text: str, limit: int = _MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
