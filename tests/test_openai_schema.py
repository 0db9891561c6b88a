"""Tests for server.openai_schema: request validation against OpenAI's own schema."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from server.openai_schema import (
    ChatCompletionValidator,
    SchemaIssue,
    load_schema,
)
from tools import extract_openai_schema as extract

# The committed cut of OpenAI's spec (tests/openapi) holds every schema the request reaches.
SPEC = Path(__file__).resolve().parent / "openapi" / "openapi-chat.yaml"


@pytest.fixture(scope="module")
def validator() -> ChatCompletionValidator:
    return ChatCompletionValidator()


def minimal() -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello"}]}


def issue_for(validator: ChatCompletionValidator, body: object) -> SchemaIssue:
    issue = validator.first_error(body)
    assert issue is not None, "expected the body to be rejected"
    return issue


# --------------------------------------------------------------------------- accepted
def test_minimal_body_is_valid(validator: ChatCompletionValidator) -> None:
    assert validator.first_error(minimal()) is None


def test_body_with_tools_json_schema_format_n_logprobs_seed_stream_options_is_valid(
    validator: ChatCompletionValidator,
) -> None:
    body = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Current weather",
                    "parameters": {"type": "object", "properties": {}},
                    "strict": True,
                },
            }
        ],
        "tool_choice": "auto",
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "answer",
                "schema": {"type": "object"},
                "strict": True,
            },
        },
        "n": 2,
        "logprobs": True,
        "top_logprobs": 5,
        "seed": 42,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.2,
        "max_completion_tokens": 128,
    }
    assert validator.first_error(body) is None


def test_unknown_top_level_field_is_accepted(
    validator: ChatCompletionValidator,
) -> None:
    body = {**minimal(), "some_future_parameter": {"anything": [1, 2, 3]}}
    assert validator.first_error(body) is None


def test_unknown_field_inside_a_message_is_accepted(
    validator: ChatCompletionValidator,
) -> None:
    body = minimal()
    body["messages"][0]["cache_control"] = {"type": "ephemeral"}
    assert validator.first_error(body) is None


def test_any_string_is_accepted_as_model(validator: ChatCompletionValidator) -> None:
    body = {**minimal(), "model": "my-local-llama-3-8b"}
    assert validator.first_error(body) is None


def test_explicit_null_is_accepted_for_nullable_parameters(
    validator: ChatCompletionValidator,
) -> None:
    nullable = [
        "temperature",
        "top_p",
        "top_logprobs",  # needs the extractor's allOf patch
        "max_completion_tokens",
        "stop",
        "stream",
        "stream_options",
        "logit_bias",
        "prediction",
        "audio",
        "seed",
        "n",
        "metadata",
        "service_tier",
        "reasoning_effort",
    ]
    body = {**minimal(), **dict.fromkeys(nullable)}
    assert validator.first_error(body) is None


def test_validation_does_not_modify_the_body(
    validator: ChatCompletionValidator,
) -> None:
    body = {**minimal(), "temperature": 1, "stop": None, "extra": {"k": [1.0]}}
    before = copy.deepcopy(body)
    validator.first_error(body)
    validator.first_error({**body, "temperature": "hot"})
    assert body == before
    assert json.dumps(body) == json.dumps(before)


# --------------------------------------------------------------------------- rejected
def test_missing_messages_is_rejected_naming_messages(
    validator: ChatCompletionValidator,
) -> None:
    issue = issue_for(validator, {"model": "gpt-4o"})
    assert issue.param == "messages"
    assert "'messages'" in issue.message
    assert issue.keyword == "required"


def test_empty_messages_is_rejected(validator: ChatCompletionValidator) -> None:
    issue = issue_for(validator, {**minimal(), "messages": []})
    assert issue.param == "messages"
    assert issue.message.startswith("messages:")


def test_unknown_role_is_rejected_naming_messages_0_role(
    validator: ChatCompletionValidator,
) -> None:
    body = {**minimal(), "messages": [{"role": "robot", "content": "beep"}]}
    issue = issue_for(validator, body)
    assert issue.param == "messages[0].role"
    assert issue.message.startswith("messages[0].role: 'robot' is not one of")
    assert "'user'" in issue.message


def test_user_message_without_content_is_rejected_naming_content(
    validator: ChatCompletionValidator,
) -> None:
    issue = issue_for(validator, {**minimal(), "messages": [{"role": "user"}]})
    assert issue.param == "messages[0].content"
    assert issue.message == "messages[0]: missing required property 'content'"


def test_string_temperature_is_rejected_naming_temperature(
    validator: ChatCompletionValidator,
) -> None:
    issue = issue_for(validator, {**minimal(), "temperature": "hot"})
    assert issue.param == "temperature"
    assert issue.message.startswith("temperature: expected number")


def test_temperature_above_two_is_rejected(validator: ChatCompletionValidator) -> None:
    issue = issue_for(validator, {**minimal(), "temperature": 5})
    assert issue.param == "temperature"
    assert issue.keyword == "maximum"


def test_non_string_model_is_rejected(validator: ChatCompletionValidator) -> None:
    issue = issue_for(validator, {**minimal(), "model": 4})
    assert issue.param == "model"
    assert issue.message == "model: expected string, got number 4"


def test_non_object_body_is_rejected_at_the_root(
    validator: ChatCompletionValidator,
) -> None:
    issue = issue_for(validator, [minimal()])
    assert issue.param == ""
    assert issue.message.startswith("request body: expected object")


def test_digit_only_object_key_is_reported_as_a_key_not_an_index(
    validator: ChatCompletionValidator,
) -> None:
    issue = issue_for(validator, {**minimal(), "logit_bias": {"50256": "ban"}})
    assert issue.param == 'logit_bias["50256"]'


def test_huge_invalid_value_is_not_echoed(validator: ChatCompletionValidator) -> None:
    body = {
        **minimal(),
        "messages": [{"role": "x" * 100_000, "content": "y" * 100_000}],
    }
    issue = issue_for(validator, body)
    assert issue.param == "messages[0].role"
    assert len(issue.message) < 300


def test_nan_temperature_is_rejected_as_invalid_number(
    validator: ChatCompletionValidator,
) -> None:
    issue = issue_for(validator, {**minimal(), "temperature": float("nan")})
    assert issue.param == "temperature"
    assert "not a valid JSON number" in issue.message


def test_non_json_python_value_is_reported_instead_of_raising(
    validator: ChatCompletionValidator,
) -> None:
    issue = issue_for(validator, {**minimal(), "metadata": {"k": object()}})
    assert issue.param == ""
    assert issue.message.startswith("request body: cannot be validated")


# --------------------------------------------------------------------------- extractor
def _extract(schemas: dict[str, Any]) -> dict[str, Any]:
    spec = {"components": {"schemas": schemas}}
    saved = extract.PATCHES[:]
    extract.PATCHES.clear()
    try:
        schema, _notes = extract.build(spec, source="test")
    finally:
        extract.PATCHES[:] = saved
    return schema


def test_extract_turns_nullable_ref_into_anyof_with_null() -> None:
    schema = _extract(
        {
            "CreateChatCompletionRequest": {
                "type": "object",
                "properties": {"p": {"$ref": "#/components/schemas/P", "nullable": True}},
            },
            "P": {"type": "string"},
        }
    )
    assert schema["properties"]["p"] == {"anyOf": [{"$ref": "#/$defs/P"}, {"type": "null"}]}


def test_extract_adds_null_to_type_and_enum_of_nullable_enum() -> None:
    schema = _extract(
        {
            "CreateChatCompletionRequest": {
                "type": "string",
                "enum": ["a", "b"],
                "nullable": True,
            }
        }
    )
    assert schema["type"] == ["string", "null"]
    assert schema["enum"] == ["a", "b", None]


def test_extract_opens_only_the_top_level_object() -> None:
    schema = _extract(
        {
            "CreateChatCompletionRequest": {
                "allOf": [{"$ref": "#/components/schemas/Base"}],
                "type": "object",
                "additionalProperties": False,
                "properties": {"nested": {"type": "object", "additionalProperties": False}},
            },
            "Base": {"type": "object", "additionalProperties": False},
        }
    )
    assert "additionalProperties" not in schema
    assert "additionalProperties" not in schema["$defs"]["Base"]
    assert schema["properties"]["nested"]["additionalProperties"] is False


def test_extract_keeps_properties_named_like_dropped_keywords() -> None:
    schema = _extract(
        {
            "CreateChatCompletionRequest": {
                "type": "object",
                "description": "dropped",
                "x-oaiMeta": {"dropped": True},
                "properties": {"description": {"type": "string", "example": "dropped"}},
            }
        }
    )
    assert schema["properties"] == {"description": {"type": "string"}}
    assert "description" not in schema
    assert "x-oaiMeta" not in schema


def test_committed_schema_matches_extractor_output() -> None:
    commit = "f85dbe223d40e1a31cba812ab2d755c7e98a92a3"
    assert commit in load_schema()
    digest = json.loads(load_schema())["$comment"].split("sha256 ")[1].split(")")[0]
    source = f"github.com/openai/openai-openapi openapi.yaml @ {commit} (sha256 {digest})"
    schema, _notes = extract.build(extract.load_spec(SPEC), source=source)
    assert extract.dumps(schema) == load_schema()
