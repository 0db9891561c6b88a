"""What a real process logs: the start-up line's fields, and one line per request across workers."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from server.settings import load_settings
from tests.conftest import TEST_CONFIG
from tests.support.processes import (
    ROOT,
    Gateway,
    ManagedProcess,
    Simulator,
    clean_env,
    free_port,
    start_gateway,
    write_config,
)
from tests.test_operations import metric_value

KEY = "sk-test-key-never-logged"  # what start_gateway configures for an upstream


def test_the_listening_line_names_upstream_models_auth_and_pid(gateway: Gateway, simulator: Simulator) -> None:
    line = gateway.process.wait_for_event("sluice_listening")

    assert line["upstreams"] == [{"name": "default", "url": simulator.base_url}]
    assert line["integration"] == "openai"
    assert line["models"] == list(load_settings(TEST_CONFIG, environ={}).models.available)
    assert line["auth"] == "off"
    assert line["pid"] == gateway.process.pid
    assert not any(KEY in text for text in gateway.process.lines)


def test_the_listening_line_names_each_configured_upstream_without_its_query_or_key(
    simulator: Simulator, tmp_path: Path
) -> None:
    upstreams = f"""
[[upstreams]]
name = "primary"
base_url = "{simulator.base_url}"
api_key_env = "PRIMARY_KEY"

[[upstreams]]
name = "spare"
base_url = "http://127.0.0.1:9/v1?api-key=sk-in-the-query"
api_key_env = "SPARE_KEY"
"""
    config = write_config(tmp_path / "upstreams.toml", upstreams)
    env = {"PRIMARY_KEY": KEY, "SPARE_KEY": KEY}
    with start_gateway(env=env, config=config) as gateway:
        line = gateway.process.wait_for_event("sluice_listening")

    assert line["upstreams"] == [
        {"name": "primary", "url": simulator.base_url},
        {"name": "spare", "url": "http://127.0.0.1:9/v1"},
    ]
    assert not any(KEY in text or "sk-in-the-query" in text for text in gateway.process.lines)


def test_a_proxy_variable_sluice_does_not_read_is_named_at_start_up(simulator: Simulator) -> None:
    # Behind a corporate proxy every request got 502 upstream_unreachable, and nothing said why.
    env = {"HTTPS_PROXY": "http://user:proxy-secret@proxy.corp:3128"}
    with start_gateway(upstream=simulator, env=env) as gateway:
        line = gateway.process.wait_for_event("upstream_proxy_ignored")

    assert (line["variables"], line["upstreams"]) == (["HTTPS_PROXY"], ["default"])
    assert not any("proxy-secret" in text for text in gateway.process.lines)


def test_the_listening_line_of_a_simulated_gateway_names_the_built_in_simulator() -> None:
    with start_gateway() as gateway:
        (upstream,) = gateway.process.wait_for_event("sluice_listening")["upstreams"]

    assert upstream["name"] == "default"
    assert upstream["url"].startswith("http://127.0.0.1:")  # the simulator's loopback port


async def test_a_request_forwarded_between_workers_is_logged_once_by_the_owner(simulator: Simulator) -> None:
    port = free_port()
    env = clean_env({"AI_INTEGRATIONS_OPENAI_API_KEY": KEY, "AI_INTEGRATIONS_OPENAI_BASE_URL": simulator.base_url})
    argv = [sys.executable, "run.py", "--port", str(port), "--config", "config/test.toml", "--workers", "2"]
    supervisor = ManagedProcess(argv, env).start()
    url = f"http://127.0.0.1:{port}"
    reads = [f"fwd-read-{n}" for n in range(12)]
    try:
        supervisor.wait_for_line(lambda _: len(supervisor.events("sluice_listening")) >= 2)
        fresh = aiohttp.TCPConnector(force_close=True)  # a new connection each time: any worker answers
        async with aiohttp.ClientSession(connector=fresh) as http:
            async with http.post(url + "/chat/streams", json={"message": "w\n#sim tokens=3"}) as response:
                stream_url = url + (await response.json())["url"]
            for request_id in reads:
                async with http.get(stream_url, headers={"X-Request-ID": request_id}) as response:
                    assert response.status == 200
                    await response.read()
        supervisor.signal(signal.SIGTERM)
        assert await asyncio.to_thread(supervisor.wait, 30) == 0  # every line is out once it exits
    finally:
        supervisor.stop()
    lines = [e for e in supervisor.events("request_finished") if e.get("request_id") in reads]
    assert sorted(e["request_id"] for e in lines) == sorted(reads)  # one line each, none twice
    owners = {e["pid"] for e in lines}
    assert len(owners) == 1  # the worker that owns the stream wrote every line
    forwarded = [e for e in lines if e.get("forwarded_by_worker")]
    assert forwarded, "no read reached the other worker: nothing was forwarded"
    assert all(e["client"] == "127.0.0.1" for e in lines)


async def test_an_upstream_connect_failure_names_host_port_and_errno() -> None:
    closed_port = free_port()  # nothing listens here: the connection is refused
    gateway = start_gateway(
        env={
            "AI_INTEGRATIONS_OPENAI_API_KEY": KEY,
            "AI_INTEGRATIONS_OPENAI_BASE_URL": f"http://127.0.0.1:{closed_port}/v1",
        }
    )
    try:
        async with aiohttp.ClientSession() as http:
            body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
            async with http.post(gateway.url + "/v1/chat/completions", json=body) as response:
                assert response.status == 502
        line = gateway.process.wait_for_event("upstream_connect_failed")
    finally:
        gateway.process.stop()

    assert line["host"] == "127.0.0.1"
    assert line["port"] == closed_port
    assert line["errno"] == errno.ECONNREFUSED
    assert line["reason"] == os.strerror(errno.ECONNREFUSED)


async def raw_exchange(url: str, request: bytes) -> bytes:
    """Send `request` as is on a new connection; everything the gateway answers until it closes."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("where", "request_bytes"),
    [
        ("header", b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\x01\r\n\r\n"),
        ("request line", b"GET /chat/stream?token={secret}&message=a\x7f HTTP/1.1\r\nHost: x\r\n\r\n"),
    ],
)
async def test_a_request_that_cannot_be_parsed_is_logged_without_what_the_client_sent(
    gateway: Gateway, where: str, request_bytes: bytes
) -> None:
    # aiohttp's own line quoted the bytes it refused, with its traceback: a key, a token, a prompt.
    secret = f"sk-never-logged-{where.replace(' ', '-')}"
    before = len(gateway.process.events("malformed_http_request"))

    answer = await raw_exchange(gateway.url, request_bytes.replace(b"{secret}", secret.encode()))

    assert answer.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request")
    gateway.process.wait_for_line(lambda _: len(gateway.process.events("malformed_http_request")) > before)
    line = gateway.process.events("malformed_http_request")[-1]
    assert (line["status"], line["level"]) == (400, "info")
    assert line["error"] in ("BadHttpMessage", "InvalidHeader", "BadStatusLine", "InvalidURLError")
    assert not any(secret in text for text in gateway.process.lines)


# Far above the drain (3 s in config/test.toml, and nothing is live): only a drain that never runs misses it.
EXIT_BOUND = 15.0


@contextlib.contextmanager
def gateway_without_a_log_reader(simulator: Simulator) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`run.py` whose stdout's reader left once it was listening (a log shipper that died); its URL."""
    port = free_port()
    env = clean_env(
        {"AI_INTEGRATIONS_OPENAI_API_KEY": "sk-test-key", "AI_INTEGRATIONS_OPENAI_BASE_URL": simulator.base_url}
    )
    argv = [sys.executable, "run.py", "--host", "127.0.0.1", "--port", str(port), "--config", str(TEST_CONFIG)]
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if "sluice_listening" in line:
                break
        process.stdout.close()  # every write to stdout now fails
        yield process, f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def chat(url: str) -> None:
    request = urllib.request.Request(
        url + "/chat",
        data=json.dumps({"message": "hi\n#sim tokens=2"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=EXIT_BOUND) as answer:
        assert answer.status == 200


def test_a_gateway_whose_log_reader_is_gone_still_serves_and_drains_on_sigterm(simulator: Simulator) -> None:
    with gateway_without_a_log_reader(simulator) as (process, url):
        for _ in range(3):
            chat(url)
        process.send_signal(signal.SIGTERM)
        assert process.wait(EXIT_BOUND) == 0


def test_log_lines_the_gateway_could_not_write_are_counted_in_its_metrics(simulator: Simulator) -> None:
    # With no log to read, the metric is how an operator learns the log shipper is gone.
    with gateway_without_a_log_reader(simulator) as (_, url):
        for _ in range(3):
            chat(url)  # an access line each, at least
        # Lines are written by a thread (server/logs.py): a line is counted once its write failed,
        # shortly after its request was answered, so the count is read until it arrives or the bound passes.
        deadline = time.monotonic() + EXIT_BOUND
        while True:
            with urllib.request.urlopen(url + "/metrics", timeout=EXIT_BOUND) as answer:
                dropped = metric_value(answer.read().decode(), "sluice_log_lines_dropped_total")
            if dropped >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.05)  # the pace of the reads, not a synchronisation
    assert dropped >= 3
