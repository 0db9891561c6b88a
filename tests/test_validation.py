"""Reading a JSON body at the edge: the content type checked from the header, nothing parsed kept.

An in-process server whose handler is `read_json_object` alone; the 415s of every route are in
tests/test_bad_input.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from server.validation import read_json_object

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
