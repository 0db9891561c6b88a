"""Who owns a browser stream in Redis: a keyed `python run.py` on a real redis-server.

The owner record is the key's name and a fingerprint of its hash keyed with the token secret
(server/auth/tokens.py), never the key or its hash. A record in the format before it (the name
alone, left by an older instance) opens the stream to no key; a stream started without keys ("")
stays readable with any.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from server.streams.redis_keys import StreamKeys
from tests.support.processes import Gateway, Simulator
from tests.support.security import KEY_ALPHA, bearer, sha256, start_keyed_gateway
from tests.support.servers import RedisServer

pytestmark = pytest.mark.timeout(60)

KEYS = StreamKeys("sluice")  # redis.key_prefix's default


@pytest.fixture
def keyed_on_redis(simulator: Simulator, redis_server: RedisServer, tmp_path: Path) -> Iterator[Gateway]:
    with start_keyed_gateway(tmp_path, simulator, env={"SLUICE_REDIS_URL": redis_server.url}) as gateway:
        yield gateway


async def written_elsewhere(redis_server: RedisServer, stream_id: str, owner: str) -> None:
    """A finished one-event stream in Redis, as another instance would have left it, owned by `owner`."""
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        event = f'id: {stream_id}:1\nevent: token\ndata: {{"content": "hi"}}\n\n'.encode()
        await client.xadd(KEYS.events(stream_id), {"e": event}, id="0-1")
        await client.xadd(KEYS.events(stream_id), {"end": "1"}, id="0-2")
        await client.set(KEYS.owner(stream_id), owner, ex=300)
    finally:
        await client.aclose()


async def read_with_alpha(gateway: Gateway, stream_id: str) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{gateway.url}/chat/streams/{stream_id}", headers=bearer(KEY_ALPHA)) as r,
    ):
        return r.status, await r.read()


async def test_the_owner_recorded_in_redis_is_the_keys_name_and_a_fingerprint_never_the_key_or_its_hash(
    keyed_on_redis: Gateway, redis_server: RedisServer
) -> None:
    async with aiohttp.ClientSession() as http:
        url = keyed_on_redis.url + "/chat/streams"
        async with http.post(url, json={"message": "hi\n#sim tokens=2"}, headers=bearer(KEY_ALPHA)) as r:
            assert r.status == 201
            stream_id = (await r.json())["id"]
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        recorded = await client.get(KEYS.owner(stream_id))
    finally:
        await client.aclose()
    assert isinstance(recorded, bytes)
    owner = recorded.decode()

    assert re.fullmatch(r"alpha:[0-9a-f]{16}", owner), owner
    assert owner.split(":")[1] not in sha256(KEY_ALPHA)
    assert KEY_ALPHA not in owner


async def test_a_stream_recorded_with_its_keys_name_alone_is_unknown_to_that_key(
    keyed_on_redis: Gateway, redis_server: RedisServer
) -> None:
    await written_elsewhere(redis_server, "before-fingerprints", "alpha")

    assert await read_with_alpha(keyed_on_redis, "before-fingerprints") == (204, b"")


async def test_a_stream_started_without_keys_stays_readable_with_a_key(
    keyed_on_redis: Gateway, redis_server: RedisServer
) -> None:
    await written_elsewhere(redis_server, "keyless", "")

    status, body = await read_with_alpha(keyed_on_redis, "keyless")

    assert status == 200
    assert b'data: {"content": "hi"}' in body
