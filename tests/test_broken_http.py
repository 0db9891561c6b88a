"""Requests aiohttp cannot parse, on a `python run.py` process: the JSON envelope, at once, once.

The last test checks one case the process cannot set up on demand (see its comment).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from types import SimpleNamespace
from unittest import mock

import pytest
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import RequestPayloadError, _ErrInfo

from server.http_protocol import watch_framing
from tests.support.client import new_request_id
from tests.support.processes import Gateway

# Far under the gateway's body_timeout (15 s by default): a broken body answered only when its
# deadline passes fails this bound, and a loaded machine does not.
ANSWER_BOUND = 5.0


async def exchange(gateway: Gateway, *writes: bytes) -> bytes:
    """Send each of `writes` on one new connection, the next once the gateway answered `100 Continue`
    to the one before; everything it answers until it closes."""
    host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        for index, data in enumerate(writes):
            writer.write(data)
            if index < len(writes) - 1:
                assert (
                    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), ANSWER_BOUND)
                    == b"HTTP/1.1 100 Continue\r\n\r\n"
                )
        return await asyncio.wait_for(reader.read(), ANSWER_BOUND)
    finally:
        writer.close()


def answers(raw: bytes) -> list[tuple[int, dict[str, str], dict[str, object]]]:
    """Each response in `raw`: status, headers (lower-case names), JSON body."""
    found = []
    while raw:
        head, _, raw = raw.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode().split("\r\n")
        headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in header_lines)}
        length = int(headers["content-length"])
        body, raw = raw[:length], raw[length:]
        found.append((int(status_line.split()[1]), headers, json.loads(body)))
    return found


@pytest.mark.parametrize(
    ("fault", "request_bytes", "message"),
    [
        ("request line", b"GET /he alth HTTP/1.1\r\nHost: x\r\n\r\n", "The request line is not valid HTTP/1.1."),
        ("method", b"G\x01T /health HTTP/1.1\r\nHost: x\r\n\r\n", "The request's method is not a valid HTTP method."),
        (
            "header size",
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"secret" * 2000 + b"\r\n\r\n",
            "The request line or a header is longer than the gateway accepts.",
        ),
        (
            "header",
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-Key: secret\x01\r\n\r\n",
            "The request is not valid HTTP/1.1.",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) and len(value) < 20 else "",
)
async def test_a_request_that_cannot_be_parsed_gets_the_json_envelope_without_its_bytes(
    gateway: Gateway, fault: str, request_bytes: bytes, message: str
) -> None:
    raw = await exchange(gateway, request_bytes)

    [(status, headers, body)] = answers(raw)  # one answer, then the connection closed
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    assert body == {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": "invalid_http"}
    }
    assert b"secret" not in raw
    assert b"he alth" not in raw


async def test_a_chunked_body_that_breaks_midway_is_400_at_once_not_a_408(gateway: Gateway) -> None:
    started = time.monotonic()
    raw = await exchange(
        gateway,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
        # Sent once the handler runs: the framing breaks while the chain waits for the rest.
        b'5\r\n{"mod\r\nnot-a-chunk-size\r\n',
    )
    elapsed = time.monotonic() - started

    [(status, _, body)] = answers(raw)  # one answer (not the fault's too), then the connection closed
    assert (status, body["error"]["code"]) == (400, "invalid_body")  # type: ignore[index]
    assert elapsed < ANSWER_BOUND


async def test_a_fault_queued_before_the_body_is_awaited_fails_the_body_at_once() -> None:
    # The fault can arrive while the chain is still at auth, before it awaits the body.
    content = StreamReader(mock.Mock(_reading_paused=False), 2**16, loop=asyncio.get_running_loop())
    content.feed_data(b'{"mod')
    fault = _ErrInfo(status=400, exc=BadHttpMessage("broken"), message="broken")
    protocol = SimpleNamespace(_messages=deque([(fault, EMPTY_PAYLOAD)]))
    request = SimpleNamespace(protocol=protocol, content=content)

    undo = watch_framing(request)  # type: ignore[arg-type]

    with pytest.raises(RequestPayloadError):
        await asyncio.wait_for(content.read(), ANSWER_BOUND)
    undo()
    assert list(protocol._messages) == [(fault, EMPTY_PAYLOAD)]  # still queued: aiohttp answers nothing more


@pytest.mark.parametrize(
    "broken",
    [
        b"Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
        b"Content-Encoding: gzip\r\nContent-Length: 8\r\n\r\nnot gzip",
    ],
    ids=["framing", "encoding"],
)
async def test_a_broken_body_is_logged_as_its_request_line_alone(gateway: Gateway, broken: bytes) -> None:
    # aiohttp drained the rest of the failed body after the answer, met the error again and
    # logged an "Unhandled exception" with its traceback: error-level noise any client can cause.
    rid = new_request_id("broken-body")
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Request-ID: {rid}\r\nContent-Type: application/json\r\n"
    writes = [head.encode() + broken]
    if b"Expect" in broken:
        writes.append(b'5\r\n{"mod\r\nnot-a-chunk-size\r\n')
    before = len(gateway.process.lines)
    [(status, _, _)] = answers(await exchange(gateway, *writes))
    assert status == 400
    # A later line: every line the broken request caused is read by then.
    marker = new_request_id("after-broken-body")
    await exchange(
        gateway, f"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Request-ID: {marker}\r\nConnection: close\r\n\r\n".encode()
    )
    await asyncio.to_thread(gateway.process.wait_for_event, "request_finished", request_id=marker)
    lines = gateway.process.lines[before:]
    assert [line for line in lines if "Unhandled exception" in line] == []
    [only] = [json.loads(line) for line in lines if rid in line]  # its request line, nothing else
    assert (only["event"], only["error_code"]) == ("request_finished", "invalid_body")


async def first_answer(gateway: Gateway, request: bytes) -> bytes:
    """The head of the first thing the gateway answers to `request` on a new connection."""
    host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), ANSWER_BOUND)
    finally:
        writer.close()


async def test_an_expectation_other_than_100_continue_is_a_json_417(gateway: Gateway) -> None:
    request = b"POST /chat HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Type: application/json\r\n"

    raw = await exchange(gateway, request + b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")

    status, headers, body = answers(raw)[0]
    assert (status, body["error"]["code"]) == (417, "expectation_failed")  # type: ignore[index]
    assert "x-request-id" in headers  # answered by the chain, logged like any request


async def test_100_continue_is_not_sent_for_a_body_the_size_limit_refuses(gateway: Gateway) -> None:
    # aiohttp said 100 Continue before any check: the client then uploaded a body refused anyway.
    request = (
        b"POST /chat HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Type: application/json\r\n"
        b"Content-Length: 999999999\r\n\r\n"
    )

    head = await first_answer(gateway, request)

    assert head.startswith(b"HTTP/1.1 413 ")
