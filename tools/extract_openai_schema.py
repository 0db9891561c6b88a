"""Extract OpenAI's ``CreateChatCompletionRequest`` into a self-contained JSON Schema.

Usage::

    python -m tools.extract_openai_schema /path/to/openapi.yaml [--output FILE]
        [--source-commit SHA]

Reads the official OpenAPI description (github.com/openai/openai-openapi), follows
every ``$ref`` reachable from ``components.schemas.CreateChatCompletionRequest`` and
writes one draft 2020-12 JSON Schema with those schemas under ``$defs``
(refs rewritten to ``#/$defs/<Name>``). On the way it

* converts OpenAPI 3.0 ``nullable: true`` into real JSON Schema (``type`` unions,
  ``null`` added to ``enum``, or ``anyOf: [..., {"type": "null"}]`` where there is
  no plain ``type``), and drops ``nullable: false``;
* drops documentation-only keys (``description``, ``example(s)``, ``title``,
  ``x-*``) and the OpenAPI-only ``discriminator`` (validators ignore it; the
  ``oneOf`` it annotates is kept);
* removes ``additionalProperties: false`` / ``unevaluatedProperties: false`` from
  the top-level request object only, so unknown top-level parameters pass;
* applies the small, documented patches in ``PATCHES`` (spec inconsistencies
  that would reject bodies OpenAI itself accepts).

Output is deterministic (sorted keys) so it can be committed and diffed.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT_SCHEMA = "CreateChatCompletionRequest"
DEFAULT_OUTPUT = (
    Path(__file__).resolve().parents[1] / "server" / "openai_schema" / "create_chat_completion_request.json"
)
_REF_PREFIX = "#/components/schemas/"

# Keywords whose value is a single subschema / list of subschemas / map of subschemas.
_SCHEMA_KEYWORDS = frozenset(
    {
        "items",
        "additionalProperties",
        "unevaluatedProperties",
        "unevaluatedItems",
        "not",
        "contains",
        "propertyNames",
        "if",
        "then",
        "else",
        "contentSchema",
    }
)
_SCHEMA_LIST_KEYWORDS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_SCHEMA_MAP_KEYWORDS = frozenset({"properties", "patternProperties", "dependentSchemas"})
# Keywords copied verbatim (their values are data, not schemas).
_VALUE_KEYWORDS = frozenset(
    {
        "type",
        "enum",
        "const",
        "default",
        "required",
        "format",
        "pattern",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "uniqueItems",
        "minProperties",
        "maxProperties",
        "dependentRequired",
        "deprecated",
        "readOnly",
        "writeOnly",
        "contentEncoding",
        "contentMediaType",
        "minContains",
        "maxContains",
    }
)
_DROPPED_KEYWORDS = frozenset({"description", "example", "examples", "title", "discriminator", "$comment"})
# Keywords that make "add null to type" unsafe: a sibling subschema would still reject null.
_NEEDS_WRAP = frozenset({"$ref", "allOf", "anyOf", "oneOf", "not", "const", "if"})


class ExtractError(Exception):
    pass


# --------------------------------------------------------------------------- patches
def _make_nullable(*path: str | int) -> Callable[[dict[str, Any]], bool]:
    """Patch: set ``nullable: true`` on the subschema at ``path`` (if it is still there)."""

    def patch(schema: dict[str, Any]) -> bool:
        target: Any = schema
        for step in path:
            try:
                target = target[step]
            except (KeyError, IndexError, TypeError):
                return False
        if not isinstance(target, dict) or target.get("nullable") is True:
            return False
        target["nullable"] = True
        return True

    return patch


# (schema name, short reason, patch on the *raw* OpenAPI schema; returns True if applied)
PATCHES: list[tuple[str, str, Callable[[dict[str, Any]], bool]]] = [
    (
        "CreateModelResponseProperties",
        (
            "allOf/1/properties/top_logprobs made nullable (the chat request and "
            "ModelResponseProperties declare top_logprobs nullable, but this allOf part "
            "did not, so the allOf rejected top_logprobs:null)"
        ),
        _make_nullable("allOf", 1, "properties", "top_logprobs"),
    ),
]


# --------------------------------------------------------------------------- extraction
def load_spec(path: Path) -> dict[str, Any]:
    # Imported dynamically (typed as Any): PyYAML ships no type stubs and is only
    # needed by this offline tool, not by the server at runtime.
    yaml: Any = importlib.import_module("yaml")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # C loader: ~1 s vs ~4 s
    with path.open("rb") as fh:
        spec = yaml.load(fh, Loader=loader)
    if not isinstance(spec, dict):
        raise ExtractError(f"{path}: not a mapping")
    return spec


def _ref_name(ref: object) -> str:
    if not isinstance(ref, str) or not ref.startswith(_REF_PREFIX):
        raise ExtractError(f"unsupported $ref {ref!r} (only {_REF_PREFIX}* is handled)")
    return ref[len(_REF_PREFIX) :]


def reachable(schemas: dict[str, Any], root: str) -> list[str]:
    """Names of all component schemas reachable from ``root`` (root first, then sorted)."""
    seen: set[str] = set()
    stack = [root]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        if name not in schemas:
            raise ExtractError(f"$ref to missing schema {name!r}")
        seen.add(name)
        _collect_refs(schemas[name], stack)
    return [root, *sorted(seen - {root})]


def _collect_refs(node: object, out: list[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                out.append(_ref_name(value))
            else:
                _collect_refs(value, out)
    elif isinstance(node, list):
        for value in node:
            _collect_refs(value, out)


def convert(node: object, where: str) -> Any:
    """Convert one OpenAPI schema object into draft 2020-12 JSON Schema."""
    if isinstance(node, bool):
        return node
    if not isinstance(node, dict):
        raise ExtractError(f"{where}: schema must be an object or boolean, got {type(node).__name__}")
    out: dict[str, Any] = {}
    nullable = False
    for key, value in node.items():
        here = f"{where}/{key}"
        if key.startswith("x-") or key in _DROPPED_KEYWORDS:
            continue
        if key == "nullable":
            if not isinstance(value, bool):
                raise ExtractError(f"{here}: nullable must be boolean")
            nullable = value
        elif key == "$ref":
            out[key] = "#/$defs/" + _ref_name(value)
        elif key in _SCHEMA_KEYWORDS:
            out[key] = convert(value, here)
        elif key in _SCHEMA_LIST_KEYWORDS:
            if not isinstance(value, list):
                raise ExtractError(f"{here}: expected a list")
            out[key] = [convert(v, f"{here}/{i}") for i, v in enumerate(value)]
        elif key in _SCHEMA_MAP_KEYWORDS:
            if not isinstance(value, dict):
                raise ExtractError(f"{here}: expected a mapping")
            out[key] = {k: convert(v, f"{here}/{k}") for k, v in value.items()}
        elif key in _VALUE_KEYWORDS:
            out[key] = value
        else:
            # Fail loudly: a keyword we do not understand may change validation.
            raise ExtractError(f"{here}: unknown keyword {key!r}; teach extract.py about it")
    return _apply_nullable(out) if nullable else out


def _apply_nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if "type" in schema and not (_NEEDS_WRAP & schema.keys()):
        types = schema["type"]
        types = [types] if isinstance(types, str) else list(types)
        if "null" not in types:
            types.append("null")
        schema["type"] = types
        if "enum" in schema and None not in schema["enum"]:
            schema["enum"] = [*schema["enum"], None]
        return schema
    if "enum" in schema and not (_NEEDS_WRAP & schema.keys()):
        if None not in schema["enum"]:
            schema["enum"] = [*schema["enum"], None]
        return schema
    # $ref / combinators / no type at all: a sibling "type" would not be enough.
    return {"anyOf": [schema, {"type": "null"}]}


def _open_top_level(root: dict[str, Any], defs: dict[str, Any], notes: list[str]) -> None:
    """Drop closed-object keywords on the top-level request object (and its allOf parts).

    Nested objects keep the spec's rules. An allOf part reached through $ref is only
    edited if no other schema refers to it (otherwise it is not "top level" only).
    """
    ref_counts: dict[str, int] = {}
    _count_refs([root, *defs.values()], ref_counts)
    todo: list[tuple[str, dict[str, Any]]] = [("#", root)]
    while todo:
        where, schema = todo.pop()
        for key in ("additionalProperties", "unevaluatedProperties"):
            if schema.get(key) is False:
                del schema[key]
                notes.append(f"removed {key}:false at {where}")
        for i, part in enumerate(schema.get("allOf", [])):
            if not isinstance(part, dict):
                continue
            ref = part.get("$ref")
            if isinstance(ref, str):
                name = ref.removeprefix("#/$defs/")
                if ref_counts.get(ref, 0) == 1:
                    todo.append((ref, defs[name]))
                elif _is_closed(defs[name]):
                    raise ExtractError(f"{ref} is closed and shared; cannot open it for the top level only")
            todo.append((f"{where}/allOf/{i}", part))


def _is_closed(schema: dict[str, Any]) -> bool:
    return schema.get("additionalProperties") is False or schema.get("unevaluatedProperties") is False


def _count_refs(node: object, counts: dict[str, int]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            counts[ref] = counts.get(ref, 0) + 1
        for value in node.values():
            _count_refs(value, counts)
    elif isinstance(node, list):
        for value in node:
            _count_refs(value, counts)


def _int_bounds_to_float(node: object) -> None:
    """OpenAPI writes int64 bounds as ±9223372036854776000 (float-rounded, outside int64).

    Store such out-of-range integer bounds as floats so every JSON reader (and
    jsonschema_rs' int64/uint64 numbers) handles them identically.
    """
    if isinstance(node, dict):
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            value = node.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
                node[key] = float(value)
        for value in node.values():
            _int_bounds_to_float(value)
    elif isinstance(node, list):
        for value in node:
            _int_bounds_to_float(value)


def build(spec: dict[str, Any], *, source: str) -> tuple[dict[str, Any], list[str]]:
    """Return (schema, notes). ``source`` is recorded in ``$comment``."""
    try:
        schemas: dict[str, Any] = spec["components"]["schemas"]
    except (KeyError, TypeError) as exc:
        raise ExtractError("spec has no components.schemas") from exc
    names = reachable(schemas, ROOT_SCHEMA)
    raw = {name: json.loads(json.dumps(schemas[name])) for name in names}  # deep copy

    notes: list[str] = []
    for name, reason, patch in PATCHES:
        if name in raw and patch(raw[name]):
            notes.append(f"patched {name}: {reason}")
        else:
            notes.append(f"patch NOT applied (spec changed?): {name}: {reason}")

    converted = {name: convert(raw[name], f"#/components/schemas/{name}") for name in names}
    root = converted.pop(ROOT_SCHEMA)
    if not isinstance(root, dict):
        raise ExtractError(f"{ROOT_SCHEMA} is not an object schema")
    defs = dict(converted)
    _open_top_level(root, defs, notes)
    if not any(n.startswith("removed ") for n in notes):
        notes.append("no additionalProperties:false on the top-level request (nothing to remove)")
    _int_bounds_to_float(root)
    _int_bounds_to_float(defs)

    comment = (
        f"GENERATED by tools/extract_openai_schema.py from {source}: "
        f"components.schemas.{ROOT_SCHEMA} and the {len(defs)} schemas it references. "
        "Do not edit by hand; re-run the extractor. Notes: " + "; ".join(notes)
    )
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": comment,
        **root,
    }
    if defs:
        schema["$defs"] = defs
    return schema, notes


def dumps(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=1, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def _commit_from_source_md(spec_path: Path) -> str | None:
    source_md = spec_path.with_name("SOURCE.md")
    if not source_md.is_file():
        return None
    match = re.search(r"`([0-9a-f]{40})`", source_md.read_text(encoding="utf-8"))
    return match.group(1) if match else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.extract_openai_schema",
        description=__doc__.split("\n")[1],
    )
    parser.add_argument("spec", type=Path, help="path to openai-openapi openapi.yaml")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"default: {DEFAULT_OUTPUT}")
    parser.add_argument(
        "--source-commit",
        help="openai/openai-openapi commit the YAML came from (default: read from SOURCE.md next to the YAML)",
    )
    args = parser.parse_args(argv)

    commit = args.source_commit or _commit_from_source_md(args.spec)
    if not commit:
        parser.error("cannot find the source commit; pass --source-commit")
    digest = hashlib.sha256(args.spec.read_bytes()).hexdigest()
    source = f"github.com/openai/openai-openapi openapi.yaml @ {commit} (sha256 {digest})"
    try:
        schema, notes = build(load_spec(args.spec), source=source)
    except ExtractError as exc:
        print(f"extract: error: {exc}", file=sys.stderr)
        return 1
    text = dumps(schema)
    args.output.write_text(text, encoding="utf-8")
    for note in notes:
        print(f"extract: {note}", file=sys.stderr)
    print(
        f"extract: wrote {args.output} ({len(text.encode())} bytes, {len(schema.get('$defs', {}))} $defs)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
