"""A keyed request's encoded body is decoded only a bounded read-ahead past `server.max_body_bytes`.

aiohttp's own `read()` raises its buffer to the limit before reading, and decoded 5.75 MiB of a
1 MB gzip bomb for a 1 MiB limit before it refused it (`middleware/body.read_counted`).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from server.errors import PayloadTooLargeError
from server.keys import SETTINGS
from server.middleware.body import read_body
from tests.conftest import make_settings

Client = TestClient[web.Request, web.Application]
AiohttpClient = Callable[..., Any]
MIB = 1 << 20
LIMIT = MIB


def gzip_bomb(decoded_mib: int) -> bytes:
    encoder = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(MIB)
    return b"".join(encoder.compress(zeros) for _ in range(decoded_mib)) + encoder.flush()


async def decoding_reader(request: web.Request) -> web.Response:
    """The body step's read; what it decoded when refused, and aiohttp's read-ahead, as JSON."""
    low, high = request.content.get_read_buffer_limits()  # before the read: it may raise them
    try:
        await read_body(request)
    except (PayloadTooLargeError, web.HTTPRequestEntityTooLarge):  # the latter: aiohttp's read() refused it
        return web.json_response({"decoded": request.content.total_bytes, "read_ahead": high + low})
    return web.json_response({"decoded": None})


async def test_a_keyed_bodys_decoding_stops_a_bounded_read_ahead_past_the_limit(aiohttp_client: AiohttpClient) -> None:
    app = web.Application(client_max_size=LIMIT)
    app[SETTINGS] = make_settings()
    app.router.add_post("/", decoding_reader)
    client: Client = await aiohttp_client(app)
    bomb = gzip_bomb(100)  # 100 KB sent, under the limit; 100 MiB decoded

    response = await client.post("/", data=bomb, headers={"Content-Encoding": "gzip"})
    refused = await response.json()

    assert refused["decoded"] is not None  # refused over the limit
    assert refused["decoded"] <= LIMIT + 2 * refused["read_ahead"]
