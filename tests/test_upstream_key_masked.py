"""The upstream's own key never reaches a client, whatever form it has and however an error quotes it.

Sluice masked OpenAI's key forms (`sk-`, `pk-`, `rk-`) and bearer tokens in the messages it passes
on; a provider's key of another form (Groq's `gsk_`, Google's `AIza`, Azure's hex) went through
whole. The gateway runs in-process in front of a fake upstream that quotes the key it was given:
whole, upper-cased, and a part of it, in every way an upstream sends an error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from server.app import create_app
from tests.conftest import AiohttpClient, make_settings

Client = TestClient[web.Request, web.Application]
COMPLETIONS = "/v1/chat/completions"
KEY = "gsk_Up5treamSecretKey0123456789abcdef"
# Eight characters in a row of the key are enough to find: a message quoting less of it says nothing.
PIECES = {KEY[start : start + 8].lower() for start in range(len(KEY) - 7)}


def quoting(request: web.Request) -> str:
    """A message quoting the key the request carried, whole, upper-cased, and a part of it."""
    given = request.headers["Authorization"].removeprefix("Bearer ")
    return f"Invalid key={given} ({given.upper()}); did you mean {given[4:20]}?"


def error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}


async def answer_400(request: web.Request) -> web.StreamResponse:
    await request.read()
    return web.json_response(error(quoting(request)), status=400)


async def answer_error_event(request: web.Request) -> web.StreamResponse:
    await request.read()
    body = b"data: " + web.json_response(error(quoting(request))).body + b"\n\n"  # type: ignore[operator]
    return web.Response(body=body, headers={"Content-Type": "text/event-stream"})


async def answer_200_error(request: web.Request) -> web.StreamResponse:
    await request.read()
    return web.json_response({"error": quoting(request)})  # a provider's text error, with status 200


FAKES = {"400": answer_400, "error_event": answer_error_event, "200_error": answer_200_error}
CALLS = {
    "v1": {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
    "v1_stream": {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True},
}


@pytest.fixture
def keyed_gateway(
    aiohttp_server: Callable[..., Any], aiohttp_client: AiohttpClient
) -> Callable[[Callable[[web.Request], Awaitable[web.StreamResponse]]], Awaitable[Client]]:
    async def build(fake: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Client:
        upstream = web.Application()
        upstream.router.add_post(COMPLETIONS, fake)
        server = await aiohttp_server(upstream)
        environ = {
            "AI_INTEGRATIONS_OPENAI_API_KEY": KEY,
            "AI_INTEGRATIONS_OPENAI_BASE_URL": str(server.make_url("/v1")),
        }
        client: Client = await aiohttp_client(create_app(make_settings(environ)))
        return client

    return build


# An error event is a stream's: a request that is not one takes it for a malformed reply, no message.
CASES = [(fake, call) for fake in FAKES for call in CALLS if (fake, call) != ("error_event", "v1")]


@pytest.mark.parametrize(("fake", "call"), CASES, ids=[f"{fake}-{call}" for fake, call in CASES])
async def test_an_upstream_error_quoting_its_key_reaches_the_client_with_the_key_masked(
    keyed_gateway: Callable[[Callable[[web.Request], Awaitable[web.StreamResponse]]], Awaitable[Client]],
    fake: str,
    call: str,
) -> None:
    gateway = await keyed_gateway(FAKES[fake])

    async with gateway.post(COMPLETIONS, json=CALLS[call]) as response:
        text = (await response.read()).decode().lower()

    assert "[redacted]" in text  # the error came through, masked
    assert not [piece for piece in PIECES if piece in text]
