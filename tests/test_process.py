"""`python run.py` as a real process, with and without an upstream key."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import aiohttp
import pytest

from tests.support.processes import ROOT, Gateway, ManagedProcess, Simulator, clean_env, free_port, start_gateway
from tests.support.sse import read_events, tokens_text


@pytest.fixture(scope="module")
def simulated_gateway() -> Iterator[Gateway]:
    """run.py with no key at all: the built-in simulated model answers."""
    gateway = start_gateway()
    yield gateway
    gateway.process.stop()


async def test_without_key_health_reports_simulated_integration(simulated_gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as http, http.get(simulated_gateway.url + "/health") as response:
        assert response.status == 200
        assert (await response.json())["integration"] == "simulated"


def test_without_key_startup_log_says_replies_are_simulated(simulated_gateway: Gateway) -> None:
    event = simulated_gateway.process.wait_for_event("simulated_upstream_started")
    assert "simulated" in event["message"]
    assert simulated_gateway.process.wait_for_event("sluice_listening")["integration"] == "simulated"


async def test_without_key_chat_and_stream_answer_over_a_real_socket(simulated_gateway: Gateway) -> None:
    body = {"message": "Hello over a socket"}
    async with aiohttp.ClientSession() as http:
        async with http.post(simulated_gateway.url + "/chat", json=body) as response:
            assert response.status == 200
            reply = await response.json()
        async with http.post(simulated_gateway.url + "/chat/stream", json=body) as response:
            assert response.status == 200
            events = await read_events(response)
    assert tokens_text(events) == reply["response"]
    assert events[-1].event == "done"


async def test_with_key_gateway_relays_the_simulator_process(gateway: Gateway, simulator: Simulator) -> None:
    body = {"message": "Hello through two processes\n#sim tokens=7"}
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway.url + "/health") as response:
            assert (await response.json())["integration"] == "openai"
        async with http.post(gateway.url + "/chat/stream", json=body, headers={"X-Request-ID": "proc-relay-1"}) as resp:
            events = await read_events(resp)
        async with http.get(simulator.url + "/_sim/requests/proc-relay-1", params={"until": "closed"}) as resp:
            seen = await resp.json()
    assert sum(1 for e in events if e.event == "token") == 7
    assert events[-1].event == "done"
    assert seen["outcome"] == "completed"


def test_with_key_the_key_never_reaches_the_log(gateway: Gateway) -> None:
    assert gateway.process.lines, "the gateway printed nothing"
    assert not any("sk-test-key-never-logged" in line for line in gateway.process.lines)


def test_help_explains_every_flag() -> None:
    result = subprocess.run(
        [sys.executable, "run.py", "--help"], cwd=ROOT, capture_output=True, text=True, check=True, env=clean_env()
    )
    for flag in ("--host", "--port", "--config", "--workers", "--log-format"):
        assert flag in result.stdout


def test_wrong_setting_stops_startup_with_one_line_naming_it() -> None:
    env = clean_env({"SLUICE_STREAM_HEARTBEAT_INTERVAL": "soon"})
    result = subprocess.run(
        [sys.executable, "run.py", "--port", str(free_port())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "stream.heartbeat_interval" in lines[0]
    assert "SLUICE_STREAM_HEARTBEAT_INTERVAL" in lines[0]


async def test_port_environment_variable_is_honoured() -> None:
    port = free_port()
    argv = [sys.executable, "run.py", "--config", "config/test.toml"]
    process = ManagedProcess(argv, clean_env({"PORT": str(port)})).start()
    try:
        process.wait_for_event("sluice_listening", url=f"http://127.0.0.1:{port}")
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/livez") as response:
            assert response.status == 200
    finally:
        process.stop()
