"""`portable_body = true`: an upstream gets only fields every OpenAI-compatible server knows, none of Sluice's own.

Sluice adds `stream_options.include_usage` to every stream and sends the original API's token
limit as `max_completion_tokens`; a portable upstream gets the client's own `stream_options` (or
none) and `max_tokens`, derived where the attempt is sent. Every other upstream gets the body as
built, byte for byte as before.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson
import pytest

from server.schemas import ChatRequest
from server.settings import UpstreamEntry
from server.upstreams.client import UpstreamClient
from server.upstreams.connections import Connections
from server.upstreams.continuation import within
from server.upstreams.portable import ASK_USAGE, NOT_SENT, asking_usage, portable
from tests.conftest import make_settings
from tests.support.raw_upstream import RawUpstream, json_reply
from tests.test_upstream_errors import BuildGateway, Received, recording_upstream

MESSAGES = [{"role": "user", "content": "hi"}]
V1_STREAM = {"model": "gpt-4o", "messages": MESSAGES, "stream": True}


def native_body(*, stream: bool, **fields: Any) -> dict[str, Any]:
    """What `/chat` (`stream=False`) or `/chat/stream` sends upstream for a request with `fields`."""
    request = ChatRequest.model_validate({"message": "hi", **fields}, context={"settings": make_settings()})
    return request.upstream_body("gpt-4o", stream=stream)


def v1_stream_body(**client: Any) -> dict[str, Any]:
    """What `/v1` sends upstream for a stream whose client sent `client`'s fields."""
    body = {**V1_STREAM, **client}
    return {**body, "stream_options": asking_usage(body)}


def test_a_portable_stream_carries_no_stream_options_the_client_did_not_send() -> None:
    assert "stream_options" not in portable(v1_stream_body())
    assert "stream_options" not in portable(native_body(stream=True))


@pytest.mark.parametrize("options", [{"include_usage": False}, {"include_usage": True}, None])
def test_a_portable_stream_carries_the_clients_own_stream_options_as_sent(options: dict[str, bool] | None) -> None:
    assert portable(v1_stream_body(stream_options=options))["stream_options"] == options


def test_every_other_upstream_is_asked_for_usage_over_the_clients_own_options() -> None:
    sent = orjson.loads(orjson.dumps(v1_stream_body(stream_options={"include_usage": False, "x": 1})))

    assert sent["stream_options"] == {"include_usage": True, "x": 1}


@pytest.mark.parametrize("stream", [False, True])
def test_a_portable_upstream_gets_the_original_apis_token_limit_as_max_tokens(stream: bool) -> None:
    body = portable(native_body(stream=stream, max_tokens=7))

    assert (body.get("max_tokens"), "max_completion_tokens" in body) == (7, False)


def test_every_other_upstream_gets_the_original_apis_token_limit_as_max_completion_tokens() -> None:
    assert orjson.loads(orjson.dumps(native_body(stream=False, max_tokens=7)))["max_completion_tokens"] == 7


def test_a_v1_clients_own_max_completion_tokens_reaches_a_portable_upstream_as_sent() -> None:
    body = {"model": "gpt-4o", "messages": MESSAGES, "max_completion_tokens": 9}

    assert portable(body) is body


def test_a_continuation_keeps_the_original_apis_token_limit_portable() -> None:
    lowered = within(native_body(stream=True, max_tokens=7), 3)

    assert portable({**lowered, "model": "other"})["max_tokens"] == 3


def test_the_options_of_a_stream_whose_client_sent_none_are_made_once() -> None:
    """The common path builds nothing per request for them."""
    assert asking_usage(dict(V1_STREAM)) is ASK_USAGE
    assert ASK_USAGE == {"include_usage": True}
    assert ASK_USAGE.sent is NOT_SENT


async def test_a_portable_client_sends_the_portable_body(raw_upstream: RawUpstream) -> None:
    connections = Connections(max_connections=0, connect_timeout=5)
    entry = UpstreamEntry(name="portable", base_url=raw_upstream.url, portable_body=True)
    client = UpstreamClient(entry, connections, make_settings().upstream)
    try:
        sent = asyncio.ensure_future(client.complete(native_body(stream=False, max_tokens=7), "rid"))
        exchange = await raw_upstream.next()
        exchange.write(json_reply(b'{"choices": [{"message": {}}]}'))
        async with asyncio.timeout(10):
            await sent
    finally:
        await connections.close()

    assert json.loads(exchange.body) == {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 7}


@pytest.mark.parametrize(
    ("path", "body"),
    [("/chat/stream", {"message": "hi"}), ("/v1/chat/completions", V1_STREAM)],
    ids=["native", "openai"],
)
async def test_a_portable_upstream_is_not_asked_for_usage(
    upstream_app_client: BuildGateway, path: str, body: dict[str, Any]
) -> None:
    received: list[Received] = []
    gateway = await upstream_app_client(recording_upstream(received), upstream={"portable_body": True})

    response = await gateway.post(path, json=body)
    await response.read()

    assert response.status == 200
    assert "stream_options" not in received[0].body


def test_the_default_upstream_takes_portable_body_from_the_upstream_section() -> None:
    settings = make_settings({"AI_INTEGRATIONS_OPENAI_API_KEY": "sk-x", "SLUICE_UPSTREAM_PORTABLE_BODY": "true"})

    (entry,) = settings.upstream_entries()
    assert entry.portable_body
