"""PROMETHEUS_MULTIPROC_DIR named by the operator for a --workers group: the group starts it empty,
so counts do not carry over a restart, and two running groups cannot share it."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.support.processes import ManagedProcess, clean_env, free_port
from tests.test_operations import metric_value
from tests.test_workers import EXIT_SECONDS

REQUESTS = "sluice_requests_total"
MODELS = {"route": "/v1/models", "method": "GET", "status": "200"}


@pytest.fixture
def metrics_dir(tmp_path: Path) -> Path:
    """The operator's PROMETHEUS_MULTIPROC_DIR: it outlives each group."""
    made = tmp_path / "metrics"
    made.mkdir()
    return made


def start_group(metrics_dir: Path) -> tuple[ManagedProcess, str]:
    """`run.py --workers 2` on `metrics_dir`, once both workers listen; its URL."""
    port = free_port()
    argv = [sys.executable, "run.py", "--port", str(port), "--config", "config/test.toml", "--workers", "2"]
    process = ManagedProcess(argv, clean_env({"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})).start()
    try:
        process.wait_for_line(lambda _: len(process.events("sluice_listening")) >= 2)
    except BaseException:
        process.stop()
        raise
    return process, f"http://127.0.0.1:{port}"


async def models_requests(url: str, send: int = 0) -> float:
    """Send `send` GET /v1/models, then read how many /metrics counts."""
    async with aiohttp.ClientSession(url) as http:
        for _ in range(send):
            async with http.get("/v1/models") as response:
                assert response.status == 200
        async with http.get("/metrics") as response:
            return metric_value(await response.text(), REQUESTS, **MODELS)


def stop(process: ManagedProcess) -> None:
    """Stop a group as an operator restarting it would: SIGTERM, then its clean exit."""
    process.signal(signal.SIGTERM)
    assert process.wait(EXIT_SECONDS) == 0
    process.stop()


async def test_a_restarted_group_counts_from_zero_in_the_operators_metrics_directory(metrics_dir: Path) -> None:
    first, url = start_group(metrics_dir)
    try:
        assert await models_requests(url, send=3) == 3
        stop(first)
    finally:
        first.stop()

    second, url = start_group(metrics_dir)
    try:
        assert await models_requests(url) == 0
        (wiped,) = second.events("metrics_dir_wiped")
        assert wiped["directory"] == str(metrics_dir)
        assert wiped["files"] > 0
    finally:
        second.stop()


async def test_a_group_refuses_a_metrics_directory_a_running_group_uses_and_leaves_its_counts(
    metrics_dir: Path,
) -> None:
    first, url = start_group(metrics_dir)
    try:
        assert await models_requests(url, send=2) == 2
        argv = [sys.executable, "run.py", "--port", str(free_port()), "--config", "config/test.toml", "--workers", "2"]
        second = ManagedProcess(argv, clean_env({"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})).start()
        try:
            refusal = second.wait_for_line(lambda line: line.startswith("sluice: ") or "supervisor_started" in line)
            assert f"PROMETHEUS_MULTIPROC_DIR={metrics_dir}" in refusal
            assert "another" in refusal
            assert second.wait(EXIT_SECONDS) == 2
        finally:
            second.stop()
        assert await models_requests(url) == 2
    finally:
        first.stop()


def test_a_metrics_directory_that_does_not_exist_is_refused_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    argv = [sys.executable, "run.py", "--port", str(free_port()), "--config", "config/test.toml", "--workers", "2"]
    process = ManagedProcess(argv, clean_env({"PROMETHEUS_MULTIPROC_DIR": str(missing)})).start()
    try:
        assert process.wait(EXIT_SECONDS) == 2
        process.stop()
        (refusal,) = [line for line in process.lines if line.startswith("sluice: ")]
        assert "expected an existing directory" in refusal
        assert "PROMETHEUS_MULTIPROC_DIR" in refusal
        assert not process.events("worker_started")
    finally:
        process.stop()
