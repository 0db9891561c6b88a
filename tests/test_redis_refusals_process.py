"""`python run.py` with shared limits on a real redis-server that refuses writes (full: `maxmemory`, `noeviction`).

A keyed request then gets what it gets with Redis unreachable (`[redis] fail_open`), never a 500.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import aiohttp
import redis.asyncio as aioredis

from tests.support.processes import Simulator
from tests.support.security import KEY_RPM, bearer, start_keyed_gateway
from tests.support.servers import RedisServer

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi\n#sim tokens=2"}]}


class Answer(NamedTuple):
    status: int
    retry_after: str | None
    code: str | None  # the error's code, for an error


async def before_and_with_redis_full(gateway_url: str, redis_server: RedisServer) -> tuple[Answer, Answer]:
    """A keyed request's answer while Redis takes writes, and one's once Redis is full."""
    url = gateway_url + "/v1/chat/completions"
    answers = []
    async with aiohttp.ClientSession() as http, aioredis.Redis.from_url(redis_server.url) as redis:
        for full in (False, True):
            if full:
                await redis.config_set("maxmemory", 1)
            async with http.post(url, json=CHAT, headers=bearer(KEY_RPM)) as response:
                body = await response.json()
                code = body["error"]["code"] if "error" in body else None
                answers.append(Answer(response.status, response.headers.get("Retry-After"), code))
    return answers[0], answers[1]


async def test_with_redis_full_a_keyed_request_is_counted_in_its_instance_and_answered(
    simulator: Simulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    with start_keyed_gateway(tmp_path, simulator, env={"SLUICE_REDIS_URL": redis_server.url}) as gateway:
        before, full = await before_and_with_redis_full(gateway.url, redis_server)
        down = gateway.process.wait_for_event("redis_down", refused="OOM")
    assert (before.status, full.status) == (200, 200)
    assert down["reply"].startswith("OOM command not allowed")


async def test_with_fail_open_off_and_redis_full_a_keyed_request_is_refused_with_503_limits_unavailable(
    simulator: Simulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    env = {"SLUICE_REDIS_URL": redis_server.url, "SLUICE_REDIS_FAIL_OPEN": "false"}
    with start_keyed_gateway(tmp_path, simulator, env=env) as gateway:
        before, full = await before_and_with_redis_full(gateway.url, redis_server)
    assert before.status == 200
    assert full == Answer(503, "5", "limits_unavailable")  # config/default.toml: retry_after = 5
