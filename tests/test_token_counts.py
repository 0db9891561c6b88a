"""The counts a key's tokens are reserved from (`max_tokens`, `max_completion_tokens`, `n`), in-process.

An absurd count (`1e308`, an "integer" to JSON Schema) is a 400 naming it before anything is
reserved; a whole float (`3.0`) counts as its integer, for the reservation and upstream alike.
The same 400 from a real process, with the key's token budget untouched, is in
tests/test_token_counts_process.py.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.errors import InvalidRequestError
from server.schemas import ChatRequest
from server.settings import Settings
from server.validation import parse_model
from tests.conftest import AiohttpClient, make_settings
from tests.support.envelope import error_of
from tests.test_upstream_errors import Received, recording_upstream

Client = TestClient[web.Request, web.Application]

TPM = 1_000_000
KEYS = {name: f"sk-gw-counts-{name}-0123456789" for name in ("int", "float")}


def chat_completion(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": "#sim tokens=2\nhi"}], **fields}


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("value", [1e308, 2**31], ids=["1e308", "2^31"])
@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens"])
async def test_a_token_limit_over_the_maximum_is_400_naming_it_on_v1(
    client: Client, name: str, value: float, stream: bool
) -> None:
    response = await client.post("/v1/chat/completions", json=chat_completion(stream=stream, **{name: value}))

    error = await error_of(response, 400)
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "invalid_request", name)
    assert error["message"].startswith(f"{name}: ")


@pytest.mark.parametrize("path", ["/chat", "/chat/stream", "/chat/streams"])
async def test_a_token_limit_over_the_maximum_is_400_naming_it_on_the_native_routes(client: Client, path: str) -> None:
    # A float such as 1e308 was refused already: the native model's integers are strict.
    response = await client.post(path, json={"message": "#sim tokens=2\nhi", "max_tokens": 2**31})

    error = await error_of(response, 400)
    assert (error["type"], error["param"]) == ("invalid_request_error", "max_tokens")
    assert error["message"].startswith("max_tokens: ")


@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens"])
async def test_the_largest_token_limit_is_served_on_v1(client: Client, name: str) -> None:
    response = await client.post("/v1/chat/completions", json=chat_completion(**{name: 2**31 - 1}))

    assert response.status == 200, await response.text()


def test_the_native_request_model_bounds_max_tokens_itself(settings: Settings) -> None:
    # Its routes read the body with the same bound first; the model keeps it for any other caller.
    with pytest.raises(InvalidRequestError) as refused:
        parse_model(ChatRequest, {"message": "hi", "max_tokens": 2**31}, settings)

    assert refused.value.param == "max_tokens"


async def test_the_largest_token_limit_is_served_on_chat(client: Client) -> None:
    response = await client.post("/chat", json={"message": "#sim tokens=2\nhi", "max_tokens": 2**31 - 1})

    assert response.status == 200, await response.text()


async def test_a_whole_float_n_reserves_as_many_choices_as_the_integer(aiohttp_client: AiohttpClient) -> None:
    # `"n": 3.0` was reserved as one choice (about 5,000 tokens, not 15,000) and sent on as 3.0.
    keys = [
        {"name": name, "key_sha256": hashlib.sha256(key.encode()).hexdigest(), "tpm": TPM} for name, key in KEYS.items()
    ]
    client: Client = await aiohttp_client(create_app(make_settings({"SLUICE_AUTH_SECRET": "s"}, auth={"keys": keys})))
    remaining = {}
    for name, n in (("int", 3), ("float", 3.0)):
        body = chat_completion(n=n, max_tokens=5000)
        response = await client.post(
            "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEYS[name]}"}
        )
        assert response.status == 200, await response.text()
        remaining[name] = int(response.headers["x-ratelimit-remaining-tokens"])  # after the reservation

    assert remaining["float"] == remaining["int"] <= TPM - 3 * 5000


async def test_whole_float_counts_go_upstream_as_their_integers_on_v1(upstream_app_client: Any) -> None:
    received: list[Received] = []
    gateway: Client = await upstream_app_client(recording_upstream(received))

    response = await gateway.post("/v1/chat/completions", json=chat_completion(n=3.0, max_tokens=5000.0))

    assert response.status == 200, await response.text()
    sent = received[0].body
    assert [(sent[name], type(sent[name])) for name in ("n", "max_tokens")] == [(3, int), (5000, int)]


async def test_a_whole_float_token_limit_goes_upstream_as_its_integer_on_chat(upstream_app_client: Any) -> None:
    received: list[Received] = []
    gateway: Client = await upstream_app_client(recording_upstream(received))

    response = await gateway.post("/chat", json={"message": "hi", "max_tokens": 7.0})

    assert response.status == 200, await response.text()
    sent = received[0].body
    assert [(sent[name], type(sent[name])) for name in ("max_completion_tokens",)] == [(7, int)]
