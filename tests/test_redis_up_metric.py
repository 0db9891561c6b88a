"""`sluice_redis_up` tells an operator whether this process reaches its Redis, on a real redis-server.

It follows the link's state: 0 from a command that found Redis gone until the link's probe answers
again. Without Redis configured the series is absent, rather than a 0 that would read as an outage.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.keys import REDIS
from tests.conftest import AiohttpClient, make_settings
from tests.support.servers import RedisServer

Client = TestClient[web.Request, web.Application]
SECONDS = 10  # a bound far from any real wait here


async def redis_up(gateway: Client) -> str | None:
    """The value line of `sluice_redis_up` in /metrics, None when absent."""
    async with gateway.get("/metrics") as response:
        text = await response.text()
    lines = [line for line in text.splitlines() if line.startswith("sluice_redis_up ")]
    return lines[0].split()[1] if lines else None


async def test_redis_up_is_1_while_redis_answers(aiohttp_client: AiohttpClient, redis_server: RedisServer) -> None:
    gateway = await aiohttp_client(create_app(make_settings(redis={"url": redis_server.url})))

    assert await redis_up(gateway) == "1.0"


async def test_redis_up_is_0_once_a_command_finds_redis_gone_and_1_when_it_answers_again(
    aiohttp_client: AiohttpClient, redis_server: RedisServer
) -> None:
    gateway = await aiohttp_client(create_app(make_settings(redis={"url": redis_server.url})))
    redis_server.kill()
    async with gateway.get("/readyz") as ready:  # reads the breakers from Redis: the command that fails
        assert (await ready.json())["status"] == "redis_down"

    assert await redis_up(gateway) == "0.0"

    redis_server.start()
    assert await gateway.app[REDIS].wait_up(SECONDS)
    assert await redis_up(gateway) == "1.0"


async def test_without_redis_there_is_no_redis_up_series(aiohttp_client: AiohttpClient) -> None:
    gateway = await aiohttp_client(create_app(make_settings()))

    assert await redis_up(gateway) is None
