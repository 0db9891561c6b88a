"""A stream answered to an HTTP/1.0 client ends with its connection.

HTTP/1.0 has no chunked framing: a body of unknown length ends where the connection does. A client
that asked for keep-alive waited after the final event for a close that never came.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from tests.support.processes import Gateway, Simulator, start_gateway

# A three-token stream takes milliseconds; the gateway's own idle limit for a connection is far beyond.
END_SECONDS = 10
IDLE_SECONDS = 120


@pytest.fixture(scope="module")
def patient_gateway(simulator: Simulator) -> Iterator[Gateway]:
    """A gateway that would keep an idle connection open for two minutes."""
    with start_gateway(upstream=simulator, env={"SLUICE_CONNECTIONS_HEADER_TIMEOUT": str(IDLE_SECONDS)}) as gateway:
        yield gateway


async def exchange_until_closed(gateway: Gateway, path: str, body: dict[str, object]) -> bytes:
    """Send `body` to `path` as an HTTP/1.0 keep-alive request; all the gateway sent until it closed."""
    host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head.encode() + payload)
        return await asyncio.wait_for(reader.read(), END_SECONDS)
    finally:
        writer.close()


def split(raw: bytes) -> tuple[list[str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.decode().lower().split("\r\n"), body


async def test_a_native_stream_to_an_http_1_0_keep_alive_client_ends_with_the_connection(
    patient_gateway: Gateway,
) -> None:
    raw = await exchange_until_closed(patient_gateway, "/chat/stream", {"message": "hi\n#sim tokens=3"})

    lines, body = split(raw)
    assert lines[0].startswith("http/1.0 200")
    assert "connection: close" in lines
    assert b"event: done\n" in body.rstrip().split(b"\n\n")[-1]


async def test_a_v1_stream_to_an_http_1_0_keep_alive_client_ends_with_the_connection(
    patient_gateway: Gateway,
) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi\n#sim tokens=3"}], "stream": True}
    raw = await exchange_until_closed(patient_gateway, "/v1/chat/completions", body)

    lines, events = split(raw)
    assert lines[0].startswith("http/1.0 200")
    assert "connection: close" in lines
    assert events.endswith(b"data: [DONE]\n\n")
