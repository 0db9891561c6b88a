"""Every start-up mistake stops Sluice with one line naming the setting, its source and what was expected, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import ROOT, clean_env, free_port


def start_up(*args: str, **environ: str) -> subprocess.CompletedProcess[str]:
    """Run `python run.py` with `args` and `environ` to its end (a mistake ends it at once)."""
    argv = [sys.executable, "run.py", "--config", "config/test.toml", *args]
    return subprocess.run(argv, cwd=ROOT, env=clean_env(environ), capture_output=True, text=True, timeout=60)


def refusal(result: subprocess.CompletedProcess[str]) -> str:
    """The one stderr line of a refused start-up; fails unless the exit status is 2."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("sluice: ")
    return lines[0]


@pytest.mark.parametrize("port", ["99999", "0", "-1", "http"])
def test_port_flag_out_of_range_names_the_flag_and_the_range(port: str) -> None:
    line = refusal(start_up(f"--port={port}"))
    assert "--port" in line
    assert "1-65535" in line


def test_port_variable_out_of_range_names_the_variable() -> None:
    line = refusal(start_up(PORT="99999"))
    assert "environment variable PORT" in line
    assert "65535" in line


def test_port_variable_not_a_number_names_the_variable() -> None:
    line = refusal(start_up(PORT="abc"))
    assert "environment variable PORT" in line
    assert "1-65535" in line


def test_port_in_use_names_the_port_and_its_source(taken_port: int) -> None:
    line = refusal(start_up("--port", str(taken_port)))
    assert f"--port {taken_port}" in line
    assert "in use" in line


def test_a_host_that_does_not_resolve_names_the_flag() -> None:
    line = refusal(start_up("--host", "nonexistent.invalid", "--port", str(free_port())))
    assert "--host nonexistent.invalid" in line
    assert "cannot resolve" in line


def test_port_in_use_from_the_variable_blames_the_variable(taken_port: int) -> None:
    line = refusal(start_up(PORT=str(taken_port)))
    assert f"PORT={taken_port}" in line
    assert "in use" in line


def test_zero_workers_names_the_flag_and_the_minimum() -> None:
    line = refusal(start_up("--workers", "0", "--port", str(free_port())))
    assert "--workers" in line
    assert "1 or more" in line


def test_misspelled_sluice_variable_names_the_closest_setting() -> None:
    line = refusal(start_up("--port", str(free_port()), SLUICE_LOGING_LEVEL="info"))
    assert "SLUICE_LOGING_LEVEL" in line
    assert "did you mean SLUICE_LOGGING_LEVEL?" in line


def test_invalid_integration_base_url_is_reported_under_its_own_name() -> None:
    line = refusal(start_up("--port", str(free_port()), AI_INTEGRATIONS_OPENAI_BASE_URL="api.example.com/v1"))
    assert "environment variable AI_INTEGRATIONS_OPENAI_BASE_URL" in line
    assert "upstream.base_url" in line
    assert "SLUICE_UPSTREAM_BASE_URL" not in line


def test_a_base_url_with_an_empty_key_stops_start_up_instead_of_simulating() -> None:
    base_url = "http://127.0.0.1:11434/v1"
    line = refusal(
        start_up(
            "--port", str(free_port()), AI_INTEGRATIONS_OPENAI_BASE_URL=base_url, AI_INTEGRATIONS_OPENAI_API_KEY=""
        )
    )
    assert "no key is set" in line
    assert "AI_INTEGRATIONS_OPENAI_API_KEY" in line


def test_typo_in_a_config_file_is_blamed_on_the_file(tmp_path: Path) -> None:
    config = tmp_path / "mine.toml"
    config.write_text("[server]\nbacklogg = 5\n")
    line = refusal(start_up("--port", str(free_port()), "--config", str(config)))
    assert f"--config file {config}" in line
    assert "server.backlogg" in line
    assert "did you mean server.backlog?" in line
    assert "environment" not in line


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        # Once started, every stream answered 500: TCP_USER_TIMEOUT (3x it, in ms) overflowed a C int.
        ("SLUICE_STREAM_SEND_TIMEOUT", "715828"),
        ("SLUICE_STREAM_SEND_TIMEOUT", "inf"),
        # uvloop's listen() raised OverflowError, a traceback.
        ("SLUICE_SERVER_BACKLOG", "99999999999999999999"),
    ],
)
def test_a_value_the_kernel_cannot_take_stops_start_up_naming_the_setting(variable: str, value: str) -> None:
    line = refusal(start_up("--port", str(free_port()), **{variable: value}))
    setting = variable.removeprefix("SLUICE_").lower().replace("_", ".", 1)
    assert f"setting {setting}:" in line
    assert f"environment variable {variable}" in line


def test_the_upstream_key_in_a_config_file_stops_start_up_naming_the_variable(tmp_path: Path) -> None:
    config = tmp_path / "mine.toml"
    config.write_text('[upstream]\napi_key = "sk-in-file"\n')
    line = refusal(start_up("--port", str(free_port()), "--config", str(config)))
    assert "setting upstream.api_key: keys are never written in a file" in line
    assert "AI_INTEGRATIONS_OPENAI_API_KEY" in line
    assert "sk-in-file" not in line


def test_a_config_path_that_is_a_directory_stops_start_up_naming_it(tmp_path: Path) -> None:
    line = refusal(start_up("--port", str(free_port()), "--config", str(tmp_path)))
    assert f"--config file {tmp_path}: cannot be read" in line


def test_a_config_file_that_is_not_utf8_stops_start_up_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "mine.toml"
    config.write_bytes(b"[server]\nbacklog = 5 # \xff\n")
    line = refusal(start_up("--port", str(free_port()), "--config", str(config)))
    assert f"--config file {config}: not UTF-8 text" in line


def test_a_table_setting_from_the_environment_stops_start_up_pointing_at_the_config_file() -> None:
    line = refusal(start_up("--port", str(free_port()), SLUICE_ROUTING_FALLBACKS="a=b"))
    assert "setting routing.fallbacks: takes TOML tables, set in the --config file" in line


def test_a_metrics_directory_that_does_not_exist_stops_a_single_process_naming_the_variable(tmp_path: Path) -> None:
    """prometheus-client writes its first file there: a missing one was a traceback."""
    line = refusal(start_up("--port", str(free_port()), PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "absent")))
    assert "setting process.metrics_dir: expected an existing directory" in line
    assert "PROMETHEUS_MULTIPROC_DIR" in line


@pytest.mark.parametrize(
    "url",
    [
        # Started, then every chat and /readyz answered 500: redis-py passed the option to each connection.
        pytest.param("redis://:hunter2@127.0.0.1:6379/0?socket_timout=5", id="misspelled-option"),
        # A traceback (ValueError: Port out of range) at start-up.
        pytest.param("redis://:hunter2@127.0.0.1:99999/0", id="port-out-of-range"),
    ],
)
def test_a_redis_url_redis_py_cannot_use_stops_start_up_naming_the_setting(url: str) -> None:
    line = refusal(start_up("--port", str(free_port()), SLUICE_REDIS_URL=url))
    assert "setting redis.url:" in line
    assert "environment variable SLUICE_REDIS_URL" in line
    assert "hunter2" not in line


def test_a_base_url_port_out_of_range_stops_every_worker_with_one_line() -> None:
    """It was a traceback per worker start (nine of them, then exit 1) with --workers 2."""
    line = refusal(
        start_up(
            "--port",
            str(free_port()),
            "--workers",
            "2",
            AI_INTEGRATIONS_OPENAI_BASE_URL="http://127.0.0.1:99999/v1",
            AI_INTEGRATIONS_OPENAI_API_KEY="sk-test",
        )
    )
    assert "setting upstream.base_url: its port is not a number 1-65535" in line
    assert "environment variable AI_INTEGRATIONS_OPENAI_BASE_URL" in line
