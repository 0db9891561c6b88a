"""Reading a JSON body at the edge: the content type checked from the header, nothing parsed kept,
and the counts a key's tokens are reserved from bounded.

An in-process server whose handler is `read_json_object` alone; the 415s of every route are in
tests/test_bad_input.py, the counts' 400s on each route in tests/test_token_counts.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp.typedefs import Handler

from server.errors import GatewayError
from server.validation import read_json_object, requested_choices

Serve = Callable[[web.Application], Awaitable[TestServer]]


async def read_body(aiohttp_server: Serve, content_type: str) -> tuple[int, list[object]]:
    """POST a JSON object as `content_type`; the status, and what the request kept of its content type."""
    kept: list[object] = []

    async def handler(request: web.Request) -> web.Response:
        body = await read_json_object(request)
        kept.append(request._content_type)
        return web.json_response(body)

    app = web.Application()
    app.router.add_post("/", handler)
    server = await aiohttp_server(app)
    async with (
        aiohttp.ClientSession() as http,
        http.post(server.make_url("/"), data=b'{"a": 1}', headers={"Content-Type": content_type}) as response,
    ):
        return response.status, kept


@pytest.mark.parametrize("content_type", ["application/json", "Application/JSON; charset=utf-8"])
async def test_a_json_body_is_read_without_keeping_a_parsed_content_type_on_the_request(
    aiohttp_server: Serve, content_type: str
) -> None:
    """aiohttp's parse of the header is a dict kept for the request's life: ~0.9 KiB of a live stream."""
    status, kept = await read_body(aiohttp_server, content_type)
    assert status == 200
    assert kept == [None]


async def post_body(aiohttp_server: Serve, raw: bytes) -> tuple[int, Any]:
    """POST `raw` as JSON to a handler that answers with what `read_json_object` made of it."""

    async def handler(request: web.Request) -> web.Response:
        return web.json_response(await read_json_object(request))

    app = web.Application(middlewares=[error_middleware])
    app.router.add_post("/", handler)
    server = await aiohttp_server(app)
    async with (
        aiohttp.ClientSession() as http,
        http.post(server.make_url("/"), data=raw, headers={"Content-Type": "application/json"}) as response,
    ):
        return response.status, orjson.loads(await response.read())


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except GatewayError as error:
        return web.json_response(error.body(), status=error.status)


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b'{"max_tokens": 1e308}', "max_tokens"),
        (b'{"max_tokens": 2147483648}', "max_tokens"),
        (b'{"max_completion_tokens": 99999999999999999999999999}', "max_completion_tokens"),  # read as a float
        (b'{"n": 129}', "n"),
        (b'{"n": 129.0}', "n"),
    ],
)
async def test_a_count_over_its_maximum_is_400_naming_it(aiohttp_server: Serve, raw: bytes, param: str) -> None:
    status, answer = await post_body(aiohttp_server, raw)

    assert (status, answer["error"]["param"]) == (400, param)


async def test_counts_at_their_maximum_are_read_as_they_are(aiohttp_server: Serve) -> None:
    raw = b'{"max_tokens": 2147483647, "max_completion_tokens": 2147483647, "n": 128}'

    status, answer = await post_body(aiohttp_server, raw)

    assert (status, answer) == (200, orjson.loads(raw))


async def test_whole_float_counts_are_read_as_their_integers(aiohttp_server: Serve) -> None:
    status, answer = await post_body(aiohttp_server, b'{"max_tokens": 5000.0, "max_completion_tokens": 1e3, "n": 3.0}')

    assert status == 200
    assert [(value, type(value)) for value in answer.values()] == [(5000, int), (1000, int), (3, int)]


@pytest.mark.parametrize("raw", [b'{"n": 2.5, "max_tokens": "many"}', b'{"max_tokens": -1e308, "n": true}'])
async def test_a_count_of_another_type_a_fraction_or_below_its_minimum_is_left_to_the_route(
    aiohttp_server: Serve, raw: bytes
) -> None:
    # Each route refuses these with its own message (OpenAI's schema, /chat's model).
    status, answer = await post_body(aiohttp_server, raw)

    assert (status, answer) == (200, orjson.loads(raw))


@pytest.mark.parametrize(("n", "choices"), [(3, 3), (3.0, 3), (None, 1), (2.5, 1), (True, 1), ("3", 1)])
def test_requested_choices_counts_a_whole_float_as_its_integer(n: object, choices: int) -> None:
    assert requested_choices({} if n is None else {"n": n}) == choices
