"""The page routes (/, /dashboard, /static/<file>) answer a failed precondition or an unsatisfiable
Range with the gateway's JSON envelope, and serve 200, 206 and 304 as aiohttp does.

aiohttp's FileResponse answers 412 and 416 with an empty body under the file's Content-Type, and
reads `Range: bytes=-0` as the whole file (206); server/routes/page.py's PageFile replaces those.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient

from server.routes.page import CONTENT_SECURITY_POLICY, STATIC
from tests.test_middleware import AccessLog, access_log

__all__ = ["access_log"]  # a fixture, used by name

Client = TestClient[web.Request, web.Application]

APP_JS = (STATIC / "app.js").read_bytes()
# Long before any file of the repository was written, and long after.
PAST = "Mon, 01 Jan 2001 00:00:00 GMT"
FUTURE = "Fri, 01 Jan 2100 00:00:00 GMT"
# Far from anything these answers wait on: the gateway answers each at once. A head that promises a
# body it never sends fails here, not at the test timeout.
ANSWER_BOUND = 10.0
PAGES = [("/", "index.html"), ("/dashboard", "dashboard.html"), ("/static/app.js", "app.js")]


async def body_of(response: ClientResponse) -> bytes:
    """The whole body of `response`, within ANSWER_BOUND."""
    async with asyncio.timeout(ANSWER_BOUND):
        return await response.read()


async def envelope(response: ClientResponse) -> dict[str, Any]:
    """The error object of a JSON envelope answer, after checking its type and shape."""
    assert response.content_type == "application/json"
    body = json.loads(await body_of(response))
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    return error


@pytest.mark.parametrize(("path", "name"), PAGES)
async def test_a_malformed_range_is_a_416_envelope_naming_the_length(client: Client, path: str, name: str) -> None:
    response = await client.get(path, headers={"Range": "bytes=abc"})

    assert response.status == 416
    assert (await envelope(response))["code"] == "range_not_satisfiable"
    assert response.headers["Content-Range"] == f"bytes */{(STATIC / name).stat().st_size}"


async def test_a_range_past_the_end_is_a_416_envelope(client: Client) -> None:
    response = await client.get("/static/app.js", headers={"Range": f"bytes={len(APP_JS)}-"})

    assert response.status == 416
    assert (await envelope(response))["code"] == "range_not_satisfiable"
    assert response.headers["Content-Range"] == f"bytes */{len(APP_JS)}"


async def test_a_suffix_range_of_zero_bytes_is_a_416_envelope(client: Client) -> None:
    # RFC 9110 14.1.1: a suffix range is satisfiable only with a non-zero length; aiohttp sent the file.
    response = await client.get("/static/app.js", headers={"Range": "bytes=-0"})

    assert response.status == 416
    assert (await envelope(response))["code"] == "range_not_satisfiable"
    assert response.headers["Content-Range"] == f"bytes */{len(APP_JS)}"


async def test_an_error_answer_keeps_the_page_headers(client: Client) -> None:
    response = await client.get("/static/app.js", headers={"Range": "bytes=abc"})

    assert response.status == 416
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["Content-Length"] == str(len(await body_of(response)))


@pytest.mark.parametrize(("path", "name"), PAGES)
async def test_an_if_match_naming_no_current_version_is_a_412_envelope(client: Client, path: str, name: str) -> None:
    response = await client.get(path, headers={"If-Match": '"not-this-version"'})

    assert response.status == 412
    error = await envelope(response)
    assert error["code"] == "precondition_failed"
    assert "If-Match" in error["message"]


async def test_an_if_unmodified_since_before_the_file_is_a_412_envelope(client: Client) -> None:
    response = await client.get("/static/app.js", headers={"If-Unmodified-Since": PAST})

    assert response.status == 412
    error = await envelope(response)
    assert error["code"] == "precondition_failed"
    assert "If-Unmodified-Since" in error["message"]


async def test_a_head_with_a_bad_range_is_the_416_head_without_a_body(client: Client) -> None:
    get = await client.get("/static/app.js", headers={"Range": "bytes=abc"})
    get_body = await body_of(get)

    head = await client.head("/static/app.js", headers={"Range": "bytes=abc"})

    assert head.status == 416
    assert head.content_type == "application/json"
    assert head.headers["Content-Length"] == str(len(get_body))
    assert await body_of(head) == b""
    # A body written after the head would be read as the next answer on the kept-alive connection.
    after = await client.get("/static/app.js")
    assert after.status == 200
    assert await body_of(after) == APP_JS


async def test_a_matching_if_none_match_stays_a_304_without_a_body(client: Client) -> None:
    etag = (await client.get("/static/app.js")).headers["ETag"]

    response = await client.get("/static/app.js", headers={"If-None-Match": etag})

    assert response.status == 304
    assert response.headers["ETag"] == etag
    assert await body_of(response) == b""


async def test_a_matching_if_none_match_wins_over_a_bad_range(client: Client) -> None:
    # RFC 9110 13.2.2: If-None-Match is evaluated before Range.
    response = await client.get("/static/app.js", headers={"If-None-Match": "*", "Range": "bytes=-0"})

    assert response.status == 304
    assert await body_of(response) == b""


async def test_an_if_match_naming_the_current_version_serves_the_file(client: Client) -> None:
    etag = (await client.get("/static/app.js")).headers["ETag"]

    response = await client.get("/static/app.js", headers={"If-Match": etag})

    assert response.status == 200
    assert await body_of(response) == APP_JS


async def test_a_range_within_the_file_is_still_a_206_of_those_bytes(client: Client) -> None:
    response = await client.get("/static/app.js", headers={"Range": "bytes=2-5"})

    assert response.status == 206
    assert response.content_type == "text/javascript"
    assert response.headers["Content-Range"] == f"bytes 2-5/{len(APP_JS)}"
    assert await body_of(response) == APP_JS[2:6]


async def test_a_suffix_range_is_still_a_206_of_the_tail(client: Client) -> None:
    response = await client.get("/static/app.js", headers={"Range": "bytes=-5"})

    assert response.status == 206
    assert response.headers["Content-Range"] == f"bytes {len(APP_JS) - 5}-{len(APP_JS) - 1}/{len(APP_JS)}"
    assert await body_of(response) == APP_JS[-5:]


async def test_a_bad_range_under_an_if_range_older_than_the_file_is_ignored(client: Client) -> None:
    # RFC 9110 13.1.5: the file changed since that date, so the Range is ignored and the file sent.
    response = await client.get("/static/app.js", headers={"If-Range": PAST, "Range": "bytes=-0"})

    assert response.status == 200
    assert await body_of(response) == APP_JS


async def test_a_bad_range_under_an_if_range_newer_than_the_file_is_a_416_envelope(client: Client) -> None:
    response = await client.get("/static/app.js", headers={"If-Range": FUTURE, "Range": "bytes=-0"})

    assert response.status == 416
    assert (await envelope(response))["code"] == "range_not_satisfiable"


async def logged_statuses(access_log: AccessLog, count: int) -> list[int]:
    """The status of each request_finished line, once there are `count`."""
    return [event["status"] for event in await access_log.finished(count)]


async def test_an_unchanged_file_is_logged_as_the_304_it_answered(client: Client, access_log: AccessLog) -> None:
    etag = (await client.get("/static/app.js")).headers["ETag"]

    response = await client.get("/static/app.js", headers={"If-None-Match": etag})

    assert response.status == 304
    assert await logged_statuses(access_log, 2) == [200, 304]


@pytest.mark.parametrize(
    ("headers", "status"),
    [({"Range": "bytes=-0"}, 416), ({"If-Match": '"no-such-version"'}, 412), ({"Range": "bytes=0-9"}, 206)],
    ids=["416", "412", "206"],
)
async def test_a_page_answer_is_logged_with_the_status_it_answered(
    client: Client, access_log: AccessLog, headers: dict[str, str], status: int
) -> None:
    response = await client.get("/static/app.js", headers=headers)
    await body_of(response)

    assert response.status == status
    assert await logged_statuses(access_log, 1) == [status]
