"""Schemathesis against OpenAI's own description of /v1: no response may violate its schemas."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.processes import ROOT, Gateway, clean_env

SPEC = Path(__file__).resolve().parent / "openapi" / "openapi-chat.yaml"
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
