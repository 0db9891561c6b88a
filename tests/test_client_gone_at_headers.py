"""A client gone by the time a stream's headers go is a departure (499), never a 500 with tracebacks.

The peer's reset can reach the transport before aiohttp cancels the handler: the headers' write
then raises, and a browser stream's reader let it through as an unhandled error (status 500, two
error-level tracebacks per request: a cheap way to flood the logs and the 5xx metrics). The gateway
runs in-process; the response's `prepare` is made to find the transport closing, as it does then.
"""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import ClientConnectionResetError, web
from aiohttp.test_utils import TestClient

from server.sse import SSEResponse
from tests.test_middleware import AccessLog, access_log

Client = TestClient[web.Request, web.Application]
__all__ = ["access_log"]  # a fixture, used by name


@pytest.fixture
def gone_at_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every SSE response finds its client gone as its headers go."""

    async def prepare(self: SSEResponse, request: web.Request) -> None:
        raise ClientConnectionResetError("Cannot write to closing transport")

    monkeypatch.setattr(SSEResponse, "prepare", prepare)


async def left_before_headers(client: Client, method: str, path: str, **kwargs: object) -> None:
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await client.request(method, path, **kwargs)  # type: ignore[arg-type]


async def test_a_browser_stream_reader_gone_at_its_headers_is_logged_499(
    client: Client, access_log: AccessLog, gone_at_headers: None
) -> None:
    started = await client.post("/chat/streams", json={"message": "hi\n#sim tokens=2"})  # a JSON answer

    await left_before_headers(client, "GET", (await started.json())["url"])

    reader = (await access_log.finished(2))[1]
    assert reader["status"] == 499
    assert not [event for event in access_log.events if event["log_level"] == "error"]


async def test_an_attached_stream_gone_at_its_headers_is_logged_499(
    client: Client, access_log: AccessLog, gone_at_headers: None
) -> None:
    await left_before_headers(client, "POST", "/chat/stream", json={"message": "hi\n#sim tokens=2"})

    [line] = await access_log.finished(1)
    assert (line["status"], line["outcome"]) == (499, "client_disconnected")
    assert not [event for event in access_log.events if event["log_level"] == "error"]
