"""Upstream failures become the right client status and envelope, on every chat route, streaming or not.

Each test runs the gateway in-process against a fake upstream (an aiohttp app) that fails one way.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from server.app import create_app
from tests.conftest import AiohttpClient, make_settings
from tests.support.envelope import error_of
from tests.support.processes import free_port

Client = TestClient[web.Request, web.Application]
BuildGateway = Callable[..., Awaitable[Client]]

UPSTREAM_KEY = "sk-test-key-never-logged"  # the key tests/conftest.py's upstream_app_client configures
COMPLETIONS = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]


@dataclass(frozen=True)
class Call:
    """One way a client asks the gateway for a chat."""

    path: str
    body: dict[str, Any]

    @property
    def streams(self) -> bool:
        """Whether the client asked for a stream."""
        return self.path == "/chat/stream" or self.body.get("stream") is True


CALLS = {
    "chat": Call("/chat", {"message": "hi"}),
    "chat_stream": Call("/chat/stream", {"message": "hi"}),
    "v1": Call(COMPLETIONS, {"model": "gpt-4o", "messages": MESSAGES}),
    "v1_stream": Call(COMPLETIONS, {"model": "gpt-4o", "messages": MESSAGES, "stream": True}),
}


@pytest.fixture(params=list(CALLS.values()), ids=list(CALLS))
def call(request: pytest.FixtureRequest) -> Call:
    """Each chat route, streaming and not: every test using this runs once per route."""
    result: Call = request.param
    return result


def failing_upstream(status: int, message: str, headers: dict[str, str] | None = None) -> web.Application:
    """An upstream that answers every chat request with `status` and an OpenAI error body."""

    async def fail(request: web.Request) -> web.Response:
        await request.read()
        body = {"error": {"message": message, "type": "invalid_request_error", "param": "messages", "code": None}}
        return web.json_response(body, status=status, headers=headers)

    app = web.Application()
    app.router.add_post(COMPLETIONS, fail)
    return app


@pytest.fixture
def impatient_gateway(aiohttp_server: Callable[..., Any], aiohttp_client: AiohttpClient) -> BuildGateway:
    """Like conftest's `upstream_app_client`, with small upstream timeouts.

    (`upstream_app_client` cannot take them: its first parameter is named `upstream`, like the section.)
    """

    async def build(upstream_app: web.Application) -> Client:
        server = await aiohttp_server(upstream_app)
        environ = {
            "AI_INTEGRATIONS_OPENAI_API_KEY": UPSTREAM_KEY,
            "AI_INTEGRATIONS_OPENAI_BASE_URL": str(server.make_url("/v1")),
        }
        # Streams give up after first_token_timeout; a non-streaming call only has its total time.
        timeouts = {"header_timeout": 0.2, "first_token_timeout": 0.2, "total_timeout": 0.5}
        settings = make_settings(environ, upstream=timeouts)
        client: Client = await aiohttp_client(create_app(settings))
        return client

    return build


async def send(gateway: Client, call: Call) -> aiohttp.ClientResponse:
    """Make `call` against the gateway."""
    return await gateway.post(call.path, json=call.body)


async def test_upstream_400_is_400_with_the_upstream_message(upstream_app_client: BuildGateway, call: Call) -> None:
    gateway = await upstream_app_client(failing_upstream(400, "Invalid 'messages[0]': too long."))

    error = await error_of(await send(gateway, call), 400)

    assert error["message"] == "Invalid 'messages[0]': too long."
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "messages"


async def test_upstream_401_is_502_without_the_upstream_message(upstream_app_client: BuildGateway, call: Call) -> None:
    leaked = f"Incorrect API key provided: {UPSTREAM_KEY}."
    gateway = await upstream_app_client(failing_upstream(401, leaked))

    response = await send(gateway, call)

    error = await error_of(response, 502)
    assert error["code"] == "upstream_auth_failed"
    assert UPSTREAM_KEY not in await response.text()
    assert "Incorrect API key" not in error["message"]


async def test_upstream_403_is_502(upstream_app_client: BuildGateway, call: Call) -> None:
    gateway = await upstream_app_client(failing_upstream(403, "Project does not have access."))

    error = await error_of(await send(gateway, call), 502)

    assert error["code"] == "upstream_auth_failed"
    assert "Project" not in error["message"]


async def test_upstream_404_is_404(upstream_app_client: BuildGateway, call: Call) -> None:
    gateway = await upstream_app_client(failing_upstream(404, "The model does not exist."))

    error = await error_of(await send(gateway, call), 404)

    assert error["message"] == "The model does not exist."


async def test_upstream_429_is_429_with_its_retry_after(upstream_app_client: BuildGateway, call: Call) -> None:
    gateway = await upstream_app_client(failing_upstream(429, "Rate limit reached.", {"Retry-After": "7"}))

    response = await send(gateway, call)

    error = await error_of(response, 429)
    assert response.headers["Retry-After"] == "7"
    assert error["type"] == "rate_limit_error"


@pytest.mark.parametrize("status", [500, 502, 504])
async def test_upstream_5xx_is_502(upstream_app_client: BuildGateway, call: Call, status: int) -> None:
    gateway = await upstream_app_client(failing_upstream(status, "The server had an error."))

    error = await error_of(await send(gateway, call), 502)

    assert error["type"] == "upstream_error"
    assert error["code"] == "upstream_failed"


async def test_upstream_503_overloaded_is_503_with_its_code_and_retry_after(
    upstream_app_client: BuildGateway, call: Call
) -> None:
    async def overloaded(request: web.Request) -> web.Response:
        await request.read()
        body = {"error": {"message": "Overloaded.", "type": "server_error", "param": None, "code": "overloaded"}}
        return web.json_response(body, status=503, headers={"Retry-After": "3"})

    upstream = web.Application()
    upstream.router.add_post(COMPLETIONS, overloaded)
    gateway = await upstream_app_client(upstream)

    response = await send(gateway, call)

    error = await error_of(response, 503)
    assert error["code"] == "overloaded"
    assert response.headers["Retry-After"] == "3"


async def test_upstream_that_never_answers_is_504(impatient_gateway: BuildGateway, call: Call) -> None:
    never = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await never.wait()
        raise AssertionError("the upstream was never meant to answer")

    upstream = web.Application()
    upstream.router.add_post(COMPLETIONS, hang)
    gateway = await impatient_gateway(upstream)

    error = await error_of(await send(gateway, call), 504)

    assert error["type"] == "timeout_error"
    if call.streams:
        assert error["code"] == "header_timeout"


async def test_unreachable_upstream_is_502_upstream_unreachable(aiohttp_client: AiohttpClient, call: Call) -> None:
    environ = {
        "AI_INTEGRATIONS_OPENAI_API_KEY": UPSTREAM_KEY,
        "AI_INTEGRATIONS_OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",
    }
    gateway: Client = await aiohttp_client(create_app(make_settings(environ)))

    error = await error_of(await send(gateway, call), 502)

    assert error["code"] == "upstream_unreachable"


async def test_a_stream_whose_upstream_sends_no_token_ends_with_a_timeout_event(
    impatient_gateway: BuildGateway,
) -> None:
    never = asyncio.Event()

    async def headers_then_silence(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await never.wait()
        raise AssertionError("the upstream was never meant to send a token")

    upstream = web.Application()
    upstream.router.add_post(COMPLETIONS, headers_then_silence)
    gateway = await impatient_gateway(upstream)

    response = await gateway.post("/chat/stream", json={"message": "hi"})

    # The upstream's 200 started the response: the failure is the stream's final event.
    assert response.status == 200
    raw = await response.text()
    last = raw.removesuffix("\n\n").split("\n\n")[-1].split("\n")
    assert last[1] == "event: failed"
    assert json.loads(last[2].removeprefix("data: "))["error"]["code"] == "first_token_timeout"


# --- what the gateway sends upstream -----------------------------------------------------------


@dataclass
class Received:
    """One request as the recording upstream saw it."""

    headers: dict[str, str]
    body: dict[str, Any]


def recording_upstream(received: list[Received]) -> web.Application:
    """An upstream that notes each request and answers it with a two-word completion."""

    async def answer(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        received.append(Received(dict(request.headers), body))
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": 1,
                    "model": body["model"],
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": "hi there"}, "finish_reason": "stop"}
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": body["model"]}
        events = [
            {**base, "choices": [{"index": 0, "delta": {"content": "hi there"}, "finish_reason": None}]},
            {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        ]
        if body.get("stream_options", {}).get("include_usage"):
            usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
            events.append({**base, "choices": [], "usage": usage})
        for event in events:
            await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post(COMPLETIONS, answer)
    return app


async def test_the_request_id_is_forwarded_upstream(upstream_app_client: BuildGateway, call: Call) -> None:
    received: list[Received] = []
    gateway = await upstream_app_client(recording_upstream(received))

    response = await gateway.post(call.path, json=call.body, headers={"X-Request-ID": "trace-42"})
    await response.read()

    assert response.status == 200
    assert [r.headers.get("X-Request-ID") for r in received] == ["trace-42"]


async def test_a_generated_request_id_is_forwarded_upstream(upstream_app_client: BuildGateway, call: Call) -> None:
    received: list[Received] = []
    gateway = await upstream_app_client(recording_upstream(received))

    response = await gateway.post(call.path, json=call.body)
    await response.read()

    assert received[0].headers.get("X-Request-ID") == response.headers["X-Request-ID"]


async def test_the_upstream_key_is_sent_as_a_bearer_token(upstream_app_client: BuildGateway, call: Call) -> None:
    received: list[Received] = []
    gateway = await upstream_app_client(recording_upstream(received))

    await (await send(gateway, call)).read()

    assert received[0].headers.get("Authorization") == f"Bearer {UPSTREAM_KEY}"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/chat/stream", {"message": "hi"}, id="native"),
        pytest.param(COMPLETIONS, {"model": "gpt-4o", "messages": MESSAGES, "stream": True}, id="openai"),
        pytest.param(
            COMPLETIONS,
            {"model": "gpt-4o", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": False}},
            id="openai-declined",
        ),
    ],
)
async def test_streams_always_ask_the_upstream_for_usage(
    upstream_app_client: BuildGateway, path: str, body: dict[str, Any]
) -> None:
    received: list[Received] = []
    gateway = await upstream_app_client(recording_upstream(received))

    response = await gateway.post(path, json=body)
    await response.read()

    assert received[0].body["stream"] is True
    assert received[0].body["stream_options"]["include_usage"] is True


@pytest.mark.parametrize("stream", [False, True])
async def test_unknown_v1_fields_reach_the_upstream_unchanged(upstream_app_client: BuildGateway, stream: bool) -> None:
    """Fields Sluice does not know, at the top and inside a message, arrive upstream as the client sent them.

    Asserts on the body the upstream received, not on the client's 200.
    Catches: server/routes/openai.py building the upstream body from known fields only, for a
    stream (`upstream_body`) or a plain completion (`complete_chat`'s body).
    """
    received: list[Received] = []
    gateway = await upstream_app_client(recording_upstream(received))
    messages = [{"role": "user", "content": "hi", "brand_new_message_field": [1, "two"]}]
    extension = {"nested": {"deep": [1, 2.5, None, True]}, "text": "ünïcode"}
    body = {"model": "gpt-4o", "messages": messages, "stream": stream, "brand_new_parameter": extension, "seed": 7}

    response = await gateway.post(COMPLETIONS, json=body)
    await response.read()

    assert response.status == 200
    sent = received[0].body
    assert sent["brand_new_parameter"] == extension
    assert sent["messages"] == messages
    assert sent["seed"] == 7
    assert {k: v for k, v in sent.items() if k != "stream_options"} == body


async def test_an_openai_stream_relays_usage_only_when_the_client_asked(upstream_app_client: BuildGateway) -> None:
    gateway = await upstream_app_client(recording_upstream([]))
    body = {"model": "gpt-4o", "messages": MESSAGES, "stream": True}

    silent = await (await gateway.post(COMPLETIONS, json=body)).text()
    asked = await (await gateway.post(COMPLETIONS, json={**body, "stream_options": {"include_usage": True}})).text()

    assert '"usage"' not in silent
    assert '"usage"' in asked
    assert silent.endswith("data: [DONE]\n\n")
    assert asked.endswith("data: [DONE]\n\n")


async def test_an_upstream_error_body_that_arrives_in_pieces_is_read_whole(
    upstream_app_client: BuildGateway, call: Call
) -> None:
    """The whole error body is read, not only its first buffered piece.

    Catches: `_status_error` in server/upstreams/client.py reading `content.read(limit)` once, which
    returns only what the first network read buffered: the message is then cut and unparsable.
    """
    message = "Invalid 'messages[0]': " + "x" * 900  # under the 1000 characters passed on

    async def fail_in_pieces(request: web.Request) -> web.StreamResponse:
        await request.read()
        body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}})
        response = web.StreamResponse(status=400, headers={"Content-Type": "application/json"})
        await response.prepare(request)
        half = len(body) // 2
        await response.write(body[:half].encode())
        await asyncio.sleep(0.05)  # not synchronisation: it makes the body reach the gateway as two reads
        await response.write(body[half:].encode())
        await response.write_eof()
        return response

    upstream = web.Application()
    upstream.router.add_post(COMPLETIONS, fail_in_pieces)
    gateway = await upstream_app_client(upstream)

    error = await error_of(await send(gateway, call), 400)

    assert error["message"] == message
