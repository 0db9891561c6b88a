"""The official openai Node SDK against `python run.py`, unchanged but for its base URL."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import Gateway

NODE_DIR = Path(__file__).resolve().parent / "node"


@pytest.fixture(scope="module")
def node_results(gateway: Gateway) -> dict[str, Any]:
    """Run tests/node/sdk_check.mjs once (its dependencies are installed by the test command)."""
    assert (NODE_DIR / "node_modules" / "openai").is_dir(), "run `npm ci` in tests/node (tests/run does)"
    result = subprocess.run(
        ["node", "sdk_check.mjs", gateway.url + "/v1"], cwd=NODE_DIR, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    results: dict[str, Any] = json.loads(result.stdout)
    return results


def test_node_sdk_non_streaming_completion_has_text_and_usage(node_results: dict[str, Any]) -> None:
    completion = node_results["completion"]
    assert completion["text"]
    assert completion["finish_reason"] == "stop"
    assert completion["usage"]["total_tokens"] > 0


def test_node_sdk_stream_yields_the_same_text_without_usage_unless_asked(node_results: dict[str, Any]) -> None:
    assert node_results["stream"]["text"] == node_results["completion"]["text"]
    assert node_results["stream"]["usageChunks"] == 0


def test_node_sdk_stream_with_include_usage_gets_usage(node_results: dict[str, Any]) -> None:
    assert node_results["streamUsage"]["completion_tokens"] > 0


def test_node_sdk_lists_models(node_results: dict[str, Any]) -> None:
    assert "gpt-4o" in node_results["models"]


@pytest.mark.parametrize(
    ("case", "error_class", "status"),
    [
        ("notFound", "NotFoundError", 404),
        ("badRequest", "BadRequestError", 400),
        ("rateLimited", "RateLimitError", 429),
    ],
)
def test_node_sdk_raises_the_class_it_would_against_openai(
    node_results: dict[str, Any], case: str, error_class: str, status: int
) -> None:
    assert node_results[case]["class"] == error_class
    assert node_results[case]["status"] == status


def test_node_sdk_raises_api_error_on_a_mid_stream_failure(node_results: dict[str, Any]) -> None:
    assert node_results["midStream"]["class"] == "APIError"
