"""Every bad input gets the JSON error envelope with the right status and a named field, never a 500."""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.validation import _LONE_SURROGATE, MAX_DEPTH, _replace_lone_surrogate
from tests.conftest import AiohttpClient, make_settings
from tests.support.envelope import error_of

Client = TestClient[web.Request, web.Application]

BODY_LIMIT = 1000
MESSAGE_LIMIT = 20
HISTORY_LIMIT = 2
CHAT_PATHS = ["/chat", "/chat/stream"]


@pytest.fixture
async def limited(aiohttp_client: AiohttpClient) -> Client:
    """The gateway with small body, message and history limits."""
    settings = make_settings(
        server={"max_body_bytes": BODY_LIMIT},
        limits={"max_message_chars": MESSAGE_LIMIT, "max_history_messages": HISTORY_LIMIT},
    )
    client: Client = await aiohttp_client(create_app(settings))
    return client


def chat_completion(**fields: Any) -> dict[str, Any]:
    """A valid /v1/chat/completions body, with `fields` replacing or adding top-level fields."""
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": "#sim tokens=2\nhi"}], **fields}


@pytest.mark.parametrize("path", [*CHAT_PATHS, "/v1/chat/completions"])
async def test_malformed_json_is_400(client: Client, path: str) -> None:
    response = await client.post(path, data=b'{"message": "hi"', headers={"Content-Type": "application/json"})

    error = await error_of(response, 400)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_json"


@pytest.mark.parametrize("path", [*CHAT_PATHS, "/v1/chat/completions"])
@pytest.mark.parametrize("body", [b'["hi"]', b'"hi"', b"42", b"null"])
async def test_a_json_body_that_is_not_an_object_is_400(client: Client, path: str, body: bytes) -> None:
    response = await client.post(path, data=body, headers={"Content-Type": "application/json"})

    error = await error_of(response, 400)
    assert "object" in error["message"]


@pytest.mark.parametrize("path", [*CHAT_PATHS, "/v1/chat/completions"])
async def test_an_empty_body_is_400(client: Client, path: str) -> None:
    response = await client.post(path, data=b"", headers={"Content-Type": "application/json"})

    error = await error_of(response, 400)
    assert "empty" in error["message"]


@pytest.mark.parametrize("path", [*CHAT_PATHS, "/v1/chat/completions"])
async def test_half_an_emoji_escaped_alone_is_read_as_the_replacement_character(client: Client, path: str) -> None:
    # JavaScript's JSON.stringify writes a string cut inside an emoji with a lone \ud83d: it was a 400.
    text = b"#sim tokens=2\\nhi \\ud83d"
    if path == "/v1/chat/completions":
        raw = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "' + text + b'"}]}'
    else:
        raw = b'{"message": "' + text + b'"}'

    response = await client.post(path, data=raw, headers={"Content-Type": "application/json"})

    assert response.status == 200
    await response.read()


@pytest.mark.parametrize(
    ("escaped", "read"),
    [
        (rb"\ud83d", "\ufffd"),
        (rb"\ude00 x", "\ufffd x"),
        (rb"\ud83d\ude00", "\U0001f600"),
        (rb"\\ud83d", "\\ud83d"),  # an escaped backslash, then text
        (rb"\\\ud83d", "\\\ufffd"),
    ],
)
def test_only_lone_surrogate_escapes_are_replaced(escaped: bytes, read: str) -> None:
    raw = b'{"a": "' + escaped + b'"}'
    assert orjson.loads(_LONE_SURROGATE.sub(_replace_lone_surrogate, raw)) == {"a": read}


def nested(depth: int) -> Any:
    """Arrays nested `depth` levels deep."""
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize("stream", [False, True])
async def test_v1_a_body_nested_deeper_than_the_limit_is_400_not_500(client: Client, stream: bool) -> None:
    # Past 254 levels the body could not be written again to go upstream: it was a 500.
    for depth in (MAX_DEPTH + 1, 300):
        body = chat_completion(stream=stream, x=nested(depth - 1))  # the body itself is level 1

        response = await client.post("/v1/chat/completions", json=body)

        error = await error_of(response, 400)
        assert error["code"] == "invalid_json"
        assert str(MAX_DEPTH) in error["message"]


@pytest.mark.parametrize("path", CHAT_PATHS)
async def test_a_chat_body_nested_deeper_than_the_limit_is_400(client: Client, path: str) -> None:
    response = await client.post(path, json={"message": "hi", "x": nested(300)})

    error = await error_of(response, 400)
    assert error["code"] == "invalid_json"


async def test_v1_a_body_nested_to_the_limit_is_accepted(client: Client) -> None:
    response = await client.post("/v1/chat/completions", json=chat_completion(x=nested(MAX_DEPTH - 1)))

    assert response.status == 200
    await response.read()


async def test_v1_a_shallow_body_with_many_brackets_is_accepted(client: Client) -> None:
    # More brackets than the limit, in strings and side by side, but never deep.
    content = "#sim tokens=2\n" + "[{" * MAX_DEPTH
    body = chat_completion(messages=[{"role": "user", "content": content}], x=[[1]] * MAX_DEPTH)

    response = await client.post("/v1/chat/completions", json=body)

    assert response.status == 200
    await response.read()


@pytest.mark.parametrize("path", [*CHAT_PATHS, "/chat/streams", "/v1/chat/completions"])
async def test_a_body_that_is_not_what_its_content_encoding_says_is_400_not_500(client: Client, path: str) -> None:
    body = b'{"message": "hi", "model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}'
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}

    response = await client.post(path, data=body, headers=headers)

    error = await error_of(response, 400)
    assert error["code"] == "invalid_body"
    assert response.headers.get("Connection") == "close"


@pytest.mark.parametrize("path", CHAT_PATHS)
async def test_a_missing_message_is_400_naming_message(client: Client, path: str) -> None:
    response = await client.post(path, json={"history": []})

    error = await error_of(response, 400)
    assert error["param"] == "message"
    assert "message" in error["message"]


@pytest.mark.parametrize("path", CHAT_PATHS)
@pytest.mark.parametrize("message", ["", "   ", "\n\t "])
async def test_an_empty_or_blank_message_is_400(client: Client, path: str, message: str) -> None:
    response = await client.post(path, json={"message": message})

    error = await error_of(response, 400)
    assert error["param"] == "message"


@pytest.mark.parametrize("path", CHAT_PATHS)
@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"message": 42}, "message"),
        ({"history": "earlier turns"}, "history"),
        ({"history": [{"role": "robot", "content": "beep"}]}, "history[0].role"),
        ({"history": [{"role": "user", "content": "ok"}, {"role": "user", "content": 7}]}, "history[1].content"),
        ({"history": [{"role": "user"}]}, "history[0].content"),
        ({"model": 4}, "model"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": 3}, "temperature"),
        ({"temperature": -0.5}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "many"}, "max_tokens"),
    ],
)
async def test_a_wrong_type_or_value_is_400_naming_the_field(
    client: Client, path: str, fields: dict[str, Any], param: str
) -> None:
    response = await client.post(path, json={"message": "hello", **fields})

    error = await error_of(response, 400)
    assert error["param"] == param
    assert error["message"].startswith(param)


@pytest.mark.parametrize("path", CHAT_PATHS)
async def test_an_unknown_model_is_404_model_not_found(client: Client, path: str) -> None:
    response = await client.post(path, json={"message": "hello", "model": "gpt-2"})

    error = await error_of(response, 404)
    assert error["code"] == "model_not_found"
    assert error["param"] == "model"


@pytest.mark.parametrize("path", [*CHAT_PATHS, "/v1/chat/completions"])
async def test_a_body_over_the_limit_is_413(limited: Client, path: str) -> None:
    padding = "x" * BODY_LIMIT
    response = await limited.post(path, json={"message": "hi", "padding": padding})

    error = await error_of(response, 413)
    assert error["code"] == "payload_too_large"


async def test_a_chunked_body_over_the_limit_is_413(limited: Client) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"message": "hi", "padding": "'
        yield b"x" * BODY_LIMIT
        yield b'"}'

    response = await limited.post("/chat", data=chunks(), headers={"Content-Type": "application/json"})

    error = await error_of(response, 413)
    assert error["code"] == "payload_too_large"


async def test_a_body_just_under_the_limit_is_accepted(limited: Client) -> None:
    response = await limited.post("/chat", json={"message": "#sim tokens=1\nhi", "padding": "x" * 900})

    assert response.status == 200


@pytest.mark.parametrize("path", [*CHAT_PATHS, "/chat/streams", "/v1/chat/completions"])
@pytest.mark.parametrize("encoding", ["zstdx", "x-gzip", "compress"])
async def test_a_body_in_an_encoding_sluice_does_not_decode_is_415_not_read_as_is(
    client: Client, path: str, encoding: str
) -> None:
    body = b'{"message": "#sim tokens=1\\nhi", "model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}'
    headers = {"Content-Type": "application/json", "Content-Encoding": encoding}

    response = await client.post(path, data=body, headers=headers)

    error = await error_of(response, 415)
    assert (error["code"], error["param"]) == ("unsupported_content_encoding", "Content-Encoding")


@pytest.mark.parametrize("encoding", ["br", "zstd"])
async def test_a_body_in_an_encoding_whose_decoder_is_not_installed_is_415_naming_those_read(
    client: Client, encoding: str
) -> None:
    """requirements.lock installs no brotli nor zstd decoder: aiohttp would fail such a body as broken
    framing (400 invalid_http); it is refused as an encoding Sluice does not read."""
    headers = {"Content-Type": "application/json", "Content-Encoding": encoding}

    response = await client.post("/chat", data=b"\x28\xb5\x2f\xfd not json", headers=headers)

    error = await error_of(response, 415)
    assert (error["code"], error["param"]) == ("unsupported_content_encoding", "Content-Encoding")
    assert error["message"].endswith("one of: deflate, gzip.")


async def test_a_body_that_does_not_decode_as_its_encoding_says_is_400_not_415(client: Client) -> None:
    """A deflate body cut short: Sluice reads deflate, so the body is broken, not in an unknown encoding."""
    body = zlib.compress(b'{"message": "#sim tokens=1\\nhi"}')[:-6]
    headers = {"Content-Type": "application/json", "Content-Encoding": "deflate"}

    response = await client.post("/chat", data=body, headers=headers)

    error = await error_of(response, 400)
    assert error["code"] == "invalid_http"
    assert "does not decode" in error["message"]


@pytest.mark.parametrize("encoding", ["identity", "IDENTITY"])
async def test_a_body_marked_identity_is_read_as_it_is(client: Client, encoding: str) -> None:
    headers = {"Content-Type": "application/json", "Content-Encoding": encoding}

    response = await client.post("/chat", data=b'{"message": "#sim tokens=1\\nhi"}', headers=headers)

    assert response.status == 200


@pytest.mark.parametrize("path", [*CHAT_PATHS, "/v1/chat/completions"])
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_a_wrong_content_type_is_415(client: Client, path: str, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = await client.post(path, data=b'{"message": "hello"}', headers=headers)

    error = await error_of(response, 415)
    assert error["code"] == "unsupported_media_type"


@pytest.mark.parametrize(
    ("content_type", "said"),
    [("", "the request has none"), ("text/plain; charset=utf-8", "'text/plain; charset=utf-8'")],
)
async def test_a_415_names_the_content_type_as_the_client_sent_it(client: Client, content_type: str, said: str) -> None:
    response = await client.post("/chat", data=b'{"message": "hello"}', headers={"Content-Type": content_type})

    error = await error_of(response, 415)
    assert said in error["message"]
    assert "octet-stream" not in error["message"]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/chat", "POST"),
        ("PUT", "/chat/stream", "POST"),
        ("POST", "/health", "GET"),
        ("DELETE", "/models", "GET"),
    ],
)
async def test_a_wrong_method_is_405_with_allow(client: Client, method: str, path: str, allowed: str) -> None:
    response = await client.request(method, path)

    error = await error_of(response, 405)
    assert error["code"] == "method_not_allowed"
    assert allowed in {part.strip() for part in response.headers["Allow"].split(",")}


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/nowhere"), ("POST", "/chat/stream/extra"), ("GET", "/v1/engines")]
)
async def test_an_unknown_path_is_404(client: Client, method: str, path: str) -> None:
    response = await client.request(method, path)

    error = await error_of(response, 404)
    assert error["code"] == "not_found"


async def test_v1_missing_messages_is_400_naming_messages(client: Client) -> None:
    response = await client.post("/v1/chat/completions", json={"model": "gpt-4o"})

    error = await error_of(response, 400)
    assert error["param"] == "messages"


async def test_v1_a_wrong_role_is_400(client: Client) -> None:
    body = chat_completion(messages=[{"role": "robot", "content": "beep"}])

    response = await client.post("/v1/chat/completions", json=body)

    error = await error_of(response, 400)
    assert error["param"] is not None
    assert error["param"].startswith("messages")


async def test_v1_a_temperature_that_is_not_a_number_is_400(client: Client) -> None:
    response = await client.post("/v1/chat/completions", json=chat_completion(temperature="hot"))

    error = await error_of(response, 400)
    assert error["param"] == "temperature"


async def test_v1_an_unknown_model_is_404_model_not_found(client: Client) -> None:
    response = await client.post("/v1/chat/completions", json=chat_completion(model="gpt-2"))

    error = await error_of(response, 404)
    assert error["code"] == "model_not_found"


@pytest.mark.parametrize("stream", [False, True])
async def test_v1_an_unknown_top_level_field_passes(client: Client, stream: bool) -> None:
    response = await client.post("/v1/chat/completions", json=chat_completion(stream=stream, my_extension={"a": 1}))

    assert response.status == 200
    await response.read()


@pytest.mark.parametrize("path", CHAT_PATHS)
async def test_a_message_over_the_length_limit_is_400(limited: Client, path: str) -> None:
    response = await limited.post(path, json={"message": "x" * (MESSAGE_LIMIT + 1)})

    error = await error_of(response, 400)
    assert error["param"] == "message"
    assert str(MESSAGE_LIMIT) in error["message"]


async def test_a_message_at_the_length_limit_is_accepted(limited: Client) -> None:
    response = await limited.post("/chat", json={"message": "x" * MESSAGE_LIMIT})

    assert response.status == 200


@pytest.mark.parametrize("path", CHAT_PATHS)
async def test_a_history_entry_over_the_length_limit_is_400(limited: Client, path: str) -> None:
    history = [{"role": "user", "content": "y" * (MESSAGE_LIMIT + 1)}]

    response = await limited.post(path, json={"message": "hi", "history": history})

    error = await error_of(response, 400)
    assert error["param"] is not None
    assert error["param"].startswith("history")


@pytest.mark.parametrize("path", CHAT_PATHS)
async def test_a_system_prompt_over_the_length_limit_is_400(limited: Client, path: str) -> None:
    # The one field of a chat that no limit bounded.
    response = await limited.post(path, json={"message": "hi", "system": "z" * (MESSAGE_LIMIT + 1)})

    error = await error_of(response, 400)
    assert error["param"] == "system"
    assert str(MESSAGE_LIMIT) in error["message"]


async def test_a_system_prompt_at_the_length_limit_is_accepted(limited: Client) -> None:
    response = await limited.post("/chat", json={"message": "hi", "system": "z" * MESSAGE_LIMIT})

    assert response.status == 200


@pytest.mark.parametrize("path", CHAT_PATHS)
async def test_more_history_than_the_limit_is_400(limited: Client, path: str) -> None:
    history = [{"role": "user", "content": "turn"}] * (HISTORY_LIMIT + 1)

    response = await limited.post(path, json={"message": "hi", "history": history})

    error = await error_of(response, 400)
    assert error["param"] == "history"
    assert str(HISTORY_LIMIT) in error["message"]


async def test_history_at_the_limit_is_accepted(limited: Client) -> None:
    history = [{"role": "user", "content": "turn"}] * HISTORY_LIMIT

    response = await limited.post("/chat", json={"message": "hi", "history": history})

    assert response.status == 200
