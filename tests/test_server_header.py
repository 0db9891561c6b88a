"""Every answer names the server as `sluice`, once, never with aiohttp's and Python's versions.

aiohttp's default (`Python/3.11 aiohttp/3.14.5`) tells a scanner the exact versions behind the gateway.
"""

from __future__ import annotations

import asyncio
import hashlib

from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient

from server.app import create_app
from tests.conftest import AiohttpClient, make_settings
from tests.support.processes import Gateway

Client = TestClient[web.Request, web.Application]

SERVER = "sluice"
KEY = "sk-gateway-key-for-the-server-header"
# Far from anything the answers here wait on: the gateway answers each at once.
ANSWER_BOUND = 10.0


def server_headers(response: ClientResponse) -> list[str]:
    """Every Server header value of `response`."""
    return response.headers.getall("Server", [])


async def raw_exchange(host: str, port: int | None, request: bytes) -> bytes:
    """Everything the server writes after `request`, on a fresh connection, up to its close."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        async with asyncio.timeout(ANSWER_BOUND):
            return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


def raw_server_headers(raw: bytes) -> list[str]:
    """Every Server header value in the head of the one answer in `raw`."""
    head, _, _ = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")[1:]
    return [value.strip() for name, _, value in (line.partition(":") for line in lines) if name.lower() == "server"]


async def test_a_json_answer_says_server_sluice(client: Client) -> None:
    response = await client.get("/health")

    assert response.status == 200
    assert server_headers(response) == [SERVER]


async def test_a_404_envelope_says_server_sluice(client: Client) -> None:
    response = await client.get("/no-such-route")

    assert response.status == 404
    assert (await response.json())["error"]["code"]
    assert server_headers(response) == [SERVER]


async def test_a_400_envelope_says_server_sluice(client: Client) -> None:
    response = await client.post("/chat", data=b"{not json", headers={"Content-Type": "application/json"})

    assert response.status == 400
    assert (await response.json())["error"]["code"]
    assert server_headers(response) == [SERVER]


async def test_a_native_sse_stream_says_server_sluice(client: Client) -> None:
    response = await client.post("/chat/stream", json={"message": "#sim tokens=2\nhi"})
    body = await response.text()

    assert response.status == 200
    assert "event: done" in body
    assert server_headers(response) == [SERVER]


async def test_a_v1_stream_says_server_sluice(client: Client) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "#sim tokens=2\nhi"}], "stream": True}
    response = await client.post("/v1/chat/completions", json=body)
    text = await response.text()

    assert response.status == 200
    assert text.rstrip().endswith("data: [DONE]")
    assert server_headers(response) == [SERVER]


async def test_a_static_file_says_server_sluice(client: Client) -> None:
    response = await client.get("/")
    await response.read()

    assert response.status == 200
    assert response.content_type == "text/html"
    assert server_headers(response) == [SERVER]


async def test_a_keyed_gateways_answer_says_server_sluice(aiohttp_client: AiohttpClient) -> None:
    # With gateway keys on, the chain installs its other response hook (keyed_response_prepared).
    key = {"name": "server-header", "key_sha256": hashlib.sha256(KEY.encode()).hexdigest()}
    settings = make_settings({"SLUICE_AUTH_SECRET": "server-header-secret"}, auth={"keys": [key]})
    client: Client = await aiohttp_client(create_app(settings))

    response = await client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})

    assert response.status == 200
    assert server_headers(response) == [SERVER]


async def test_an_unparsable_request_is_answered_with_server_sluice(client: Client) -> None:
    # aiohttp refuses a bad method before routing: the answer comes from GatewayProtocol, no hook ran.
    raw = await raw_exchange(client.host, client.port, b"G\x01T /health HTTP/1.1\r\nHost: x\r\n\r\n")

    assert raw.split(b" ", 2)[1] == b"400"  # aiohttp answers a request it never parsed as HTTP/1.0
    assert b"invalid_http" in raw
    assert raw_server_headers(raw) == [SERVER]


async def test_run_py_answers_a_header_over_8_kib_with_server_sluice(gateway: Gateway) -> None:
    host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
    request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"

    raw = await raw_exchange(host, int(port), request)

    assert raw.split(b" ", 2)[1] == b"400"  # aiohttp answers a request it never parsed as HTTP/1.0
    assert b"invalid_http" in raw
    assert raw_server_headers(raw) == [SERVER]
