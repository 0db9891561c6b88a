"""The README's examples work verbatim against a running gateway (only the port differs)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator

import pytest

from tests.support.processes import ROOT, Gateway, clean_env, start_gateway

README = (ROOT / "README.md").read_text()
README_URL = "http://localhost:8080"


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def curl_commands() -> list[str]:
    commands = []
    for block in code_blocks("sh"):
        for command in block.replace("\\\n", " ").splitlines():
            if command.startswith("curl "):
                commands.append(command)
    return commands


@pytest.fixture(scope="module")
def simulated_gateway() -> Iterator[Gateway]:
    gateway = start_gateway()
    yield gateway
    gateway.process.stop()


def test_readme_has_curl_examples_for_every_chat_route() -> None:
    joined = "\n".join(curl_commands())
    for path in ("/health", "/models", "/chat ", "/chat/stream", "/v1/chat/completions"):
        assert f"{README_URL}{path}" in joined + " "


@pytest.mark.parametrize("command", curl_commands())
def test_readme_curl_example_works(simulated_gateway: Gateway, command: str) -> None:
    result = subprocess.run(
        command.replace(README_URL, simulated_gateway.url) + " --fail-with-body",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout.strip()
    if output.startswith("{"):
        assert "error" not in json.loads(output)
    else:
        assert output.endswith(("data: [DONE]", "}")), output[-300:]


def test_readme_python_sdk_example_streams_text(simulated_gateway: Gateway) -> None:
    (snippet,) = code_blocks("python")
    result = subprocess.run(
        [sys.executable, "-c", snippet.replace(README_URL, simulated_gateway.url)],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split()) > 3


def test_readme_error_example_is_what_the_gateway_answers(simulated_gateway: Gateway) -> None:
    (example,) = [block for block in code_blocks("json") if '"error"' in block]
    body = json.dumps({"message": "Hi", "history": [{"role": "robot", "content": "beep"}]})
    result = subprocess.run(
        ["curl", "-s", simulated_gateway.url + "/chat", "-H", "Content-Type: application/json", "-d", body],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(result.stdout) == json.loads(example)


def settings_table() -> list[tuple[str, str]]:
    """(environment variable, default) for each single setting in the README's settings table."""
    table = README.split("| setting (environment variable) | default | meaning |", 1)[1].split("\n\n", 1)[0]
    rows = []
    for line in table.splitlines()[2:]:
        names, default = (cell.strip() for cell in line.strip("|").split("|")[:2])
        first, *more = (name.strip("` ") for name in names.split(" / "))
        if "*" in first:
            continue  # a group of settings, described elsewhere
        section = first.removeprefix("SLUICE_").split("_", 1)[0]
        defaults = default.split(" / ") if more else [default]
        rows.append((first, defaults[0]))
        rows.extend((f"SLUICE_{section}{suffix}", value) for suffix, value in zip(more, defaults[1:], strict=True))
    return rows


def as_written_in_the_readme(value: object) -> str:
    if value in ([], {}, "", None):
        return "empty"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def test_the_readme_settings_table_gives_the_defaults_of_config_default_toml() -> None:
    config = tomllib.loads((ROOT / "config" / "default.toml").read_text())
    sections = sorted(config, key=len, reverse=True)
    rows = settings_table()
    assert len(rows) > 30
    for variable, default in rows:
        name = variable.removeprefix("SLUICE_").lower()
        section = next(s for s in sections if name.startswith(s + "_"))
        value = config[section][name.removeprefix(section + "_")]
        written = default.strip("`").replace("none", "empty")
        assert written == as_written_in_the_readme(value), variable
