"""The hostile corpus against `python run.py` with gateway keys configured: every case passes."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator

import aiohttp
import pytest

from tests.hostile.corpus import CASES, Case
from tests.support.processes import Gateway, Simulator
from tests.support.security import KEY_ALPHA, KEY_FROM_ENV, KEY_NARROW, METRICS_KEY, ORIGIN, SECRET, start_keyed_gateway

SECRETS = (KEY_ALPHA, KEY_NARROW, KEY_FROM_ENV, METRICS_KEY, SECRET, "sk-test-key-never-logged")


@pytest.fixture(scope="module")
def keyed(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_keyed_gateway(tmp_path_factory.mktemp("hostile"), simulator)
    yield gateway
    gateway.process.stop()


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_a_hostile_request_gets_the_right_answer(keyed: Gateway, case: Case) -> None:
    headers = {"Origin": "https://evil.example", **case.headers}
    if case.raw is not None:
        status, response_headers, body = await send_raw(keyed, case)
    else:
        data = io.BytesIO(case.data) if case.data is not None else None
        async with (
            aiohttp.ClientSession() as http,
            http.request(case.method, keyed.url + case.path, headers=headers, json=case.json, data=data) as response,
        ):
            body = await response.read()
        status, response_headers = response.status, dict(response.headers)
    expected = case.status if isinstance(case.status, frozenset) else frozenset({case.status})
    assert status in expected, body[:300]
    text = body.decode(errors="replace")
    if status >= 400 and case.envelope:
        error = json.loads(body)["error"]
        assert set(error) >= {"message", "type", "code"}
        if case.code is not None:
            assert error["code"] == case.code
    assert "Traceback" not in text
    for secret in SECRETS:
        assert secret not in text
        assert all(secret not in value for value in response_headers.values())
    if headers["Origin"] != ORIGIN:
        assert "Access-Control-Allow-Origin" not in response_headers
    assert "Set-Cookie" not in response_headers


async def send_raw(gateway: Gateway, case: Case) -> tuple[int, dict[str, str], bytes]:
    """Send the case's request line and raw header lines over a socket; the status, headers and body."""
    assert case.raw is not None
    host, port = gateway.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        request = f"{case.method} {case.path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n".encode()
        writer.write(request + case.raw + b"\r\n")
        async with asyncio.timeout(15):
            answer = await reader.read()
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode(errors="replace").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def test_no_secret_reached_the_gateways_log(keyed: Gateway) -> None:
    for secret in SECRETS:
        assert not any(secret in line for line in keyed.process.lines)
