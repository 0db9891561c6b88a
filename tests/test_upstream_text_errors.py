"""An upstream's 4xx in plain text reaches the client with the upstream's own words.

A JSON error body's message was always passed on; a `text/plain` one was lost behind "The upstream
rejected the request.". It is passed on now as a JSON one is (bounded, credentials masked), except
markup (a proxy's HTML page, whatever type it is sent with), a 401/403's (it may quote the
gateway's key) and a 5xx's (a proxy's words about the provider's insides).

The route cases run the gateway in-process in front of a fake aiohttp upstream (conftest's
`upstream_app_client`); the rules of the text itself are checked on status_failure.
"""

from __future__ import annotations

import pytest
from aiohttp import web

from server.upstreams.failures import MESSAGE_LIMIT, status_failure
from server.upstreams.parser import Headers
from tests.support.envelope import error_of
from tests.test_upstream_errors import CALLS, COMPLETIONS, BuildGateway, Call

UPSTREAM_KEY = "sk-test-key-never-logged"  # the key conftest's upstream_app_client configures
REJECTED = "The upstream rejected the request."  # the generic message, when the upstream's is not passed on
PLAIN = "text/plain; charset=utf-8"


@pytest.fixture(params=list(CALLS.values()), ids=list(CALLS))
def call(request: pytest.FixtureRequest) -> Call:
    """Each chat route, streaming and not (test_upstream_errors.CALLS)."""
    result: Call = request.param
    return result


def text_upstream(status: int, body: str, content_type: str = "text/plain") -> web.Application:
    """An upstream that answers every chat request with `status` and `body` as `content_type`."""

    async def fail(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=status, text=body, content_type=content_type)

    app = web.Application()
    app.router.add_post(COMPLETIONS, fail)
    return app


def plain(status: int, body: bytes, content_type: str = PLAIN) -> str:
    """The message status_failure gives a client for an upstream's `status` with `body` as `content_type`."""
    headers = Headers()
    headers["content-type"] = content_type  # as the parser keeps it: by lower-case name
    return status_failure(status, headers, body).message


# --- on every route ------------------------------------------------------------------------------------


async def test_an_upstream_400_in_plain_text_is_400_with_its_text(
    upstream_app_client: BuildGateway, call: Call
) -> None:
    gateway = await upstream_app_client(text_upstream(400, "bad request, plain text"))

    error = await error_of(await gateway.post(call.path, json=call.body), 400)

    assert (error["message"], error["code"]) == ("bad request, plain text", "upstream_rejected")


async def test_an_upstream_401_in_plain_text_is_502_without_its_text(
    upstream_app_client: BuildGateway, call: Call
) -> None:
    gateway = await upstream_app_client(text_upstream(401, f"Incorrect API key provided: {UPSTREAM_KEY}"))

    response = await gateway.post(call.path, json=call.body)

    error = await error_of(response, 502)
    assert error["code"] == "upstream_auth_failed"
    assert "Incorrect API key" not in await response.text()


async def test_an_upstream_400_html_page_keeps_the_generic_message(
    upstream_app_client: BuildGateway, call: Call
) -> None:
    page = "<html><body><h1>400 Bad Request</h1>nginx</body></html>"
    gateway = await upstream_app_client(text_upstream(400, page, content_type="text/html"))

    error = await error_of(await gateway.post(call.path, json=call.body), 400)

    assert error["message"] == REJECTED


# --- the text itself -----------------------------------------------------------------------------------


def test_an_html_page_sent_as_plain_text_keeps_the_generic_message() -> None:
    assert plain(400, b"<!DOCTYPE html>\n<html><body>Bad Request</body></html>") == REJECTED


def test_a_text_sent_as_html_keeps_the_generic_message_even_without_tags() -> None:
    # Only text/plain is a message: an HTML body (or any other type) is a page, whatever it holds.
    assert plain(400, b"400 Bad Request", content_type="text/html; charset=utf-8") == REJECTED


def test_plain_text_with_a_tag_anywhere_keeps_the_generic_message() -> None:
    assert plain(400, b"400 Bad Request: <b>the body</b> could not be read") == REJECTED


def test_plain_text_comparing_with_angle_brackets_is_not_taken_for_markup() -> None:
    assert plain(400, b"max_tokens must be <5 and > 0") == "max_tokens must be <5 and > 0"


def test_a_long_plain_text_is_cut_to_the_message_limit() -> None:
    assert plain(400, b"x" * 5000) == "x" * MESSAGE_LIMIT


def test_a_credential_quoted_in_plain_text_is_masked() -> None:
    message = plain(400, b"invalid api key sk-LEAK5abcd for this model")

    assert "LEAK" not in message
    assert message == "invalid api key [redacted] for this model"


def test_a_plain_texts_trailing_newline_is_not_part_of_its_message() -> None:
    assert plain(422, b"bad request, plain text\r\n") == "bad request, plain text"


def test_a_blank_plain_text_keeps_the_generic_message() -> None:
    assert plain(400, b" \r\n\t\n") == REJECTED


def test_plain_text_that_is_not_utf8_is_passed_on_with_replacement_characters() -> None:
    assert plain(400, b"caf\xe9 not allowed") == "caf\ufffd not allowed"


def test_json_sent_as_plain_text_is_read_as_json() -> None:
    assert plain(400, b'{"error": {"message": "Invalid tools."}}') == "Invalid tools."


def test_json_without_a_message_sent_as_plain_text_is_not_passed_on_raw() -> None:
    assert plain(400, b'{"error": {"code": "bad_tools"}}') == REJECTED


def test_a_429_in_plain_text_passes_its_text_on() -> None:
    assert plain(429, b"Too many requests, slow down.") == "Too many requests, slow down."


def test_a_503_in_plain_text_keeps_the_generic_message() -> None:
    # Envoy's own answer when the provider behind it is down: not the request's fault, nor the client's business.
    assert plain(503, b"upstream connect error or disconnect/reset before headers") == "The upstream is overloaded."


def test_a_403_in_plain_text_hides_its_text() -> None:
    assert "sk-" not in plain(403, b"Project key sk-proj-abcd1234 may not use this model.")
