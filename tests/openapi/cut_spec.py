"""Cut OpenAI's openapi.yaml down to the operations Sluice mirrors, for the conformance test.

Usage: python -m tests.openapi.cut_spec PATH/TO/openapi.yaml > tests/openapi/openapi-chat.yaml
Keeps createChatCompletion and listModels and every component they reference, unchanged but for
one thing: OpenAI gives the streamed chunk's schema as the `schema` of `text/event-stream`, meaning
each event's data, while schemathesis applies such a schema to each event's envelope ({data, event})
and so rejects every correct chunk. Here each event is declared an envelope with string data;
tests/test_conformance.py validates each event's data against CreateChatCompletionStreamResponse.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

OPERATIONS = {"/chat/completions": ["post"], "/models": ["get"]}
HEADER = (
    "# createChatCompletion and listModels with every component they reference, cut unchanged from\n"
    "# OpenAI's official openapi.yaml (github.com/openai/openai-openapi, MIT licence) by\n"
    "# `python -m tests.openapi.cut_spec openapi.yaml`. Source commit: {commit}.\n"
)


def cut(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with only OPERATIONS and the components they reach."""
    out = {k: v for k, v in spec.items() if k not in ("paths", "components", "x-oaiMeta", "tags", "webhooks")}
    out["paths"] = {path: {m: spec["paths"][path][m] for m in methods} for path, methods in OPERATIONS.items()}
    components = spec["components"]
    needed: dict[tuple[str, str], Any] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref" and isinstance(value, str) and value.startswith("#/components/"):
                    _, _, kind, name = value.split("/", 3)
                    if (kind, name) not in needed:
                        needed[(kind, name)] = components[kind][name]
                        walk(components[kind][name])
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(out["paths"])
    out["components"] = {}
    for (kind, name), value in sorted(needed.items()):
        out["components"].setdefault(kind, {})[name] = value
    if "securitySchemes" in components:
        out["components"]["securitySchemes"] = components["securitySchemes"]
    stream = out["paths"]["/chat/completions"]["post"]["responses"]["200"]["content"]["text/event-stream"]
    stream["schema"] = {
        "type": "object",
        "required": ["data"],
        "properties": {"data": {"type": "string"}},
        "description": "One SSE event; its data is a chat.completion.chunk (see tests/openapi/cut_spec.py).",
    }
    return out


def main() -> None:
    with open(sys.argv[1], "rb") as file:
        spec = yaml.load(file, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    commit = sys.argv[2] if len(sys.argv) > 2 else "f85dbe223d40e1a31cba812ab2d755c7e98a92a3"
    sys.stdout.write(HEADER.format(commit=commit))
    sys.stdout.write(yaml.safe_dump(cut(spec), sort_keys=False, allow_unicode=True, width=120))


if __name__ == "__main__":
    main()
