"""Schemathesis against OpenAI's own description of /v1: no response may violate its schemas."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import jsonschema_rs
import pytest
import yaml

from tests.support.processes import ROOT, Gateway, clean_env
from tests.support.sse import read_events
from tools.extract_openai_schema import convert, reachable

SPEC = Path(__file__).resolve().parent / "openapi" / "openapi-chat.yaml"
STREAM_CHUNK = "CreateChatCompletionStreamResponse"
# What "conformance" means here: Sluice's responses match OpenAI's schemas, headers and content
# types, and nothing is a 5xx that is not an upstream failure. Checks about authentication and
# undocumented statuses (OpenAI documents only 200 and 429; Sluice answers 400/404/413/415 as
# OpenAI does) are not about Sluice's conformance and are not run.
CHECKS = "not_a_server_error,response_schema_conformance,content_type_conformance,response_headers_conformance"


def test_v1_conforms_to_openais_schema(gateway: Gateway) -> None:
    env = clean_env({"SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks", "PYTHONPATH": str(ROOT)})
    result = subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "schemathesis"),
            "run",
            str(SPEC),
            "--url",
            gateway.url + "/v1",
            "--include-operation-id",
            "createChatCompletion",
            "--include-operation-id",
            "listModels",
            "--checks",
            CHECKS,
            "--max-examples",
            "40",
            "--seed",
            "20261129",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout


def stream_chunk_validator() -> jsonschema_rs.Validator:
    """CreateChatCompletionStreamResponse from the same spec, as a JSON Schema validator."""
    spec = yaml.safe_load(SPEC.read_text())
    schemas = spec["components"]["schemas"]
    names = reachable(schemas, STREAM_CHUNK)
    converted = {name: convert(copy.deepcopy(schemas[name]), f"#/components/schemas/{name}") for name in names}
    root = converted.pop(STREAM_CHUNK)
    return jsonschema_rs.validator_for({**root, "$defs": converted})


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"stream_options": {"include_usage": True}},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}], "seed": 3},
        {"max_completion_tokens": 3},
    ],
)
async def test_every_streamed_chunk_matches_openais_chunk_schema(gateway: Gateway, extra: dict[str, object]) -> None:
    validator = stream_chunk_validator()
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Conform"}], "stream": True, **extra}
    async with aiohttp.ClientSession() as http, http.post(gateway.url + "/v1/chat/completions", json=body) as response:
        events = [e for e in await read_events(response) if e.comment is None]
    assert events[-1].data == "[DONE]"
    for event in events[:-1]:
        errors = [error.message for error in validator.iter_errors(json.loads(event.data))]
        assert errors == [], event.data
