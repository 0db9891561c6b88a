"""A response hook that fails: the client gets the JSON envelope's 500, never a reply without a byte.

aiohttp runs `on_response_prepare` hooks inside `prepare`, before the headers; a hook's exception
there closed the connection. Here the gateway's own CORS hook (routes/cors.py) fails, its policy
broken on purpose, on the whole gateway in-process on its simulated model: on a plain answer (which
aiohttp prepares after the chain), on a stream (which the handler prepares), and on an error answer.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from server.cors import CorsPolicy

Client = TestClient[web.Request, web.Application]

ENVELOPE = {
    "error": {
        "message": "Sluice failed to prepare its response.",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
    }
}
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True}


class PolicyBroken(Exception):
    pass


@pytest.fixture
def broken_cors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every CORS policy fails when asked about an origin: the CORS hook raises on every response."""

    def fail(self: CorsPolicy, origin: str | None) -> str | None:
        raise PolicyBroken("broken on purpose")

    monkeypatch.setattr(CorsPolicy, "allow_origin", fail)


async def envelope_of(response: Any) -> dict[str, Any]:
    assert (response.status, response.content_type) == (500, "application/json")
    body: dict[str, Any] = await response.json()
    return body


async def test_a_hook_failing_on_a_plain_answer_gives_the_json_500(client: Client, broken_cors: None) -> None:
    async with client.get("/v1/models") as response:
        assert await envelope_of(response) == ENVELOPE


async def test_a_hook_failing_on_a_stream_gives_the_json_500(client: Client, broken_cors: None) -> None:
    async with client.post("/v1/chat/completions", json=CHAT, headers={"X-Request-ID": "t-hook"}) as response:
        assert await envelope_of(response) == ENVELOPE
        # The envelope went through the hooks too: the chain's gave it the request's id.
        assert response.headers["X-Request-ID"] == "t-hook"


async def test_a_hook_failing_on_an_error_answer_gives_the_json_500(client: Client, broken_cors: None) -> None:
    async with client.get("/no-such-route") as response:
        assert await envelope_of(response) == ENVELOPE


async def test_a_hook_failure_is_logged_as_an_error_with_its_hook_and_traceback(
    client: Client, broken_cors: None
) -> None:
    with capture_logs() as logs:
        async with client.post("/v1/chat/completions", json=CHAT) as response:
            await response.read()
    failed = [line for line in logs if line["event"] == "response_hook_failed"]
    assert failed
    assert {(line["log_level"], line["hook"], line.get("exc_info")) for line in failed} == {
        ("error", "add_cors_headers", True)
    }


async def test_the_access_line_names_a_hook_failure_as_its_error_code(client: Client, broken_cors: None) -> None:
    with capture_logs() as logs:
        async with client.post("/v1/chat/completions", json=CHAT) as response:
            await response.read()
    (line,) = [line for line in logs if line["event"] == "request_finished"]
    assert (line["status"], line["error_code"]) == (500, "response_hook_failed")
