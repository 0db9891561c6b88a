"""A non-streaming upstream reply is relayed only when it is a chat completion.

A 200 is no promise of one: a proxy's HTML page, a cut body or an error object sent with status
200 used to reach the client as `200 application/json` that no SDK could read.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from server.errors import UpstreamError
from server.upstreams.backoff import retryable, tries_next_candidate
from server.upstreams.failures import MESSAGE_LIMIT, check_completion, event_failure, status_failure
from tests.support.envelope import error_of

Client = TestClient[web.Request, web.Application]
COMPLETION = b'{"id": "c", "object": "chat.completion", "choices": [{"index": 0, "message": {"content": "hi"}}]}'


def failure_of(reply: bytes) -> UpstreamError:
    """The error `check_completion` raises for `reply` (it must raise one)."""
    with pytest.raises(UpstreamError) as failure:
        check_completion(reply)
    return failure.value


def test_a_chat_completion_passes() -> None:
    check_completion(COMPLETION)


@pytest.mark.parametrize(
    "reply",
    [
        b"<html>Bad gateway</html>",
        b'{"id": oops',
        b"[1, 2]",
        b'{"id": "c", "object": "chat.completion"}',
        b'{"id": "c", "choices": []}',
        b"",
    ],
)
def test_a_reply_that_is_not_a_chat_completion_is_a_malformed_reply_left_for_another_upstream(reply: bytes) -> None:
    failure = failure_of(reply)

    assert (failure.status, failure.code) == (502, "upstream_malformed_reply")
    assert tries_next_candidate(failure)
    assert not retryable(failure)  # the same upstream would answer the same


def test_an_error_object_sent_with_status_200_is_that_error_and_retried() -> None:
    failure = failure_of(b'{"error": {"message": "The model is overloaded.", "code": "overloaded"}}')

    assert (failure.code, failure.message) == ("overloaded", "The model is overloaded.")
    assert retryable(failure)


@pytest.mark.parametrize(
    "error",
    [
        b'{"error": {"code": 400, "message": "Invalid tools."}}',
        b'{"error": {"type": "invalid_request_error", "message": "Invalid tools."}}',
    ],
)
def test_an_error_object_sent_with_200_that_refuses_the_request_is_not_retried(error: bytes) -> None:
    # Retried, a client's own mistake would go round every upstream and open their breakers.
    failure = failure_of(error)

    assert (failure.status, failure.code) == (400, "upstream_rejected")
    assert not tries_next_candidate(failure)


@pytest.mark.parametrize(
    "reply",
    [b'{"error": "The model is overloaded."}', b'{"object": "error", "message": "The model is overloaded."}'],
    ids=["text", "vllm"],
)
def test_another_providers_error_sent_with_status_200_is_that_error_and_retried(reply: bytes) -> None:
    failure = failure_of(reply)

    assert (failure.status, failure.message) == (502, "The model is overloaded.")
    assert retryable(failure)


def test_a_vllm_error_sent_with_200_that_refuses_the_request_is_not_retried() -> None:
    failure = failure_of(b'{"object": "error", "message": "Too long.", "type": "BadRequestError", "code": 400}')

    assert (failure.status, failure.code, failure.message) == (400, "upstream_rejected", "Too long.")
    assert not tries_next_candidate(failure)


def test_an_error_status_with_a_text_error_passes_its_message_on() -> None:
    failure = status_failure(400, {}, b'{"error": "Unknown parameter: foo."}')

    assert (failure.status, failure.message) == (400, "Unknown parameter: foo.")


def test_an_error_object_sent_with_200_that_refuses_the_key_hides_its_message() -> None:
    # OpenAI's own shape: typed as a refused request, which alone would pass the message on.
    reply = (
        b'{"error": {"code": "invalid_api_key", "type": "invalid_request_error",'
        b' "message": "Incorrect API key provided: sk-ab12...yz89."}}'
    )

    failure = failure_of(reply)

    assert (failure.status, failure.code) == (502, "upstream_auth_failed")
    assert "sk-" not in failure.message


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/chat/completions",
            {"model": "gpt-4o", "messages": [{"role": "user", "content": "x\n#sim fault=malformed"}]},
        ),
        ("/chat", {"message": "x\n#sim fault=malformed"}),
    ],
)
async def test_a_malformed_non_streaming_reply_is_502_not_relayed(
    client: Client, path: str, body: dict[str, object]
) -> None:
    response = await client.post(path, json=body)

    error = await error_of(response, 502)
    assert error["code"] == "upstream_malformed_reply"


@pytest.mark.parametrize(
    "error",
    [
        b'{"error": {"type": "authentication_error", "message": "Bad key sk-ab12cd34."}}',
        b'{"error": {"code": "401", "message": "Bad key sk-ab12cd34."}}',
        b'{"error": {"status": "403", "message": "Bad key sk-ab12cd34."}}',
        b'{"error": {"type": "permission_error", "message": "Key sk-ab12cd34 may not use it."}}',
    ],
    ids=["type", "code_text", "status_text", "permission"],
)
def test_a_refused_key_in_another_providers_form_hides_its_message(error: bytes) -> None:
    failure = failure_of(error)

    assert (failure.status, failure.code) == (502, "upstream_auth_failed")
    assert "sk-" not in failure.message


@pytest.mark.parametrize(
    "failure",
    [
        lambda: failure_of(b'{"error": "invalid_api_key: sk-upstream-LEAK2"}'),
        lambda: status_failure(400, {}, b'{"error": {"message": "Key sk-proj-LEAK2abc is not for this model."}}'),
        lambda: event_failure({"message": "invalid api key sk-LEAKY3, Bearer abc.def"}),
    ],
    ids=["reply", "status", "event"],
)
def test_a_credential_quoted_in_any_upstream_message_is_masked(failure: Callable[[], UpstreamError]) -> None:
    message = failure().message

    assert "LEAK" not in message
    assert "abc.def" not in message
    assert "[redacted]" in message


MISTRAL_422 = (
    b'{"object": "error", "message": {"detail": [{"type": "extra_forbidden", "loc": ["body", "stream_options"],'
    b' "msg": "Extra inputs are not permitted", "input": {"include_usage": true}}]},'
    b' "type": "invalid_request_error", "param": null, "code": null}'
)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"detail": "max_tokens must be at least 1"}', "max_tokens must be at least 1"),
        (
            b'{"detail": [{"loc": ["body", "messages"], "msg": "Field required", "type": "missing"}]}',
            "body.messages: Field required",
        ),
        (MISTRAL_422, "body.stream_options: Extra inputs are not permitted"),
        (b'{"error": {"message": {"reason": "bad tools"}}}', '{"reason":"bad tools"}'),
        (b'{"error": {"message": ["one", "two"]}}', '["one","two"]'),
    ],
    ids=["fastapi_text", "fastapi_list", "mistral", "object", "list"],
)
def test_an_error_status_passes_its_message_on_in_each_providers_form(body: bytes, message: str) -> None:
    failure = status_failure(422, {}, body)

    assert (failure.status, failure.code, failure.message) == (422, "upstream_rejected", message)


def test_a_validation_errors_input_is_not_quoted_in_its_message() -> None:
    # FastAPI quotes the refused input: a whole request, a prompt. Where and what suffice.
    body = b'{"detail": [{"loc": ["body"], "msg": "Invalid JSON", "input": {"messages": "a private prompt"}}]}'

    assert status_failure(422, {}, body).message == "body: Invalid JSON"


def test_a_message_rendered_from_a_list_is_bounded_and_masks_credentials() -> None:
    item = '{"loc": ["body", "api_key"], "msg": "Key sk-LEAK4abcd refused"}'
    body = ('{"detail": [' + ", ".join([item] * 100) + "]}").encode()

    message = status_failure(422, {}, body).message

    assert len(message) <= MESSAGE_LIMIT  # of about 4,000 characters
    assert "LEAK" not in message
    assert message.startswith("body.api_key: Key [redacted] refused; ")


def test_an_error_event_whose_message_is_an_object_passes_it_on() -> None:
    failure = event_failure({"message": {"detail": [{"loc": ["body", "n"], "msg": "Too many choices"}]}})

    assert failure.message == "body.n: Too many choices"
