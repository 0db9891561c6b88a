"""A real redis-server that is there but refuses writes: full (`maxmemory`, `noeviction`) or a replica.

Every user of the link falls back as when Redis is unreachable, the link is not up again until
Redis takes writes, and no background loop ends for it. `CONFIG SET maxmemory 1` makes Redis
answer every write "OOM command not allowed..." while PING and reads still answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import hiredis
import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError
from structlog.testing import capture_logs

from server.auth.limits import KeyLimits
from server.shared.breakers import RedisBreakerStore
from server.shared.limit_store import RedisLimitStore
from server.shared.link import UNREACHABLE, RedisLink, RedisRefusedError, call_packed, ended_by_server
from server.streams.redis_keys import StreamKeys
from server.streams.redis_store import RedisStreamStore
from server.streams.store import StoreUnavailableError
from server.upstreams.breaker import BreakerRecord
from tests.conftest import make_settings
from tests.support.processes import free_port
from tests.support.servers import RedisServer
from tests.test_redis_store import event, read_all

SECONDS = 10  # a bound far from any real wait here
# Seconds of a lease whose first renewal (a third of it in) comes after every bound of a test together.
UNRENEWED = 3 * 10 * SECONDS
KEYS = StreamKeys("sluice")
NextEvent = Callable[[str], Awaitable[None]]


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """The test's own client, as an operator's redis-cli."""
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
async def make_link(redis_server: RedisServer) -> AsyncIterator[Callable[..., RedisLink]]:
    """Started links to the test's redis-server (with any other `redis` settings), closed after the test."""
    links: list[RedisLink] = []

    def make(**settings: Any) -> RedisLink:
        link = RedisLink(make_settings(redis={"url": redis_server.url, **settings}).redis)
        link.start()
        links.append(link)
        return link

    yield make
    for link in links:
        await link.close()


@pytest.fixture
async def make_store(make_link: Callable[..., RedisLink]) -> AsyncIterator[Callable[..., RedisStreamStore]]:
    """A stream store on a link of its own, as one instance has; all are closed after the test."""
    stores: list[RedisStreamStore] = []

    def make(lease: float = 1.0) -> RedisStreamStore:
        store = RedisStreamStore(make_link(lease_seconds=lease), make_settings().browser)
        store.start()
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


async def fill(redis_client: aioredis.Redis) -> None:
    """Redis full: every write refused with OOM from now on.

    Redis refuses a write when the memory it uses is over `maxmemory` and it may evict nothing: one
    byte is under any Redis's use, whatever it holds at that instant (checked, as Redis sees it).
    """
    await redis_client.config_set("maxmemory", 1)
    memory = await redis_client.info("memory")
    assert memory["maxmemory_policy"] == "noeviction"
    assert memory["used_memory"] > memory["maxmemory"] == 1


async def free(redis_client: aioredis.Redis) -> None:
    await redis_client.config_set("maxmemory", 0)


async def went_down(link: RedisLink) -> None:
    """Return once a command of the link's found Redis unavailable."""
    await asyncio.wait_for(link._down.wait(), SECONDS)


@contextlib.asynccontextmanager
async def key_events(redis_client: aioredis.Redis, key: str) -> AsyncIterator[NextEvent]:
    """Await Redis's next keyspace event of `key` by name ("set", "expired"): what Redis did, when it did it."""
    await redis_client.config_set("notify-keyspace-events", "KA")
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(f"__keyspace@0__:{key}")

    async def next_event(name: str) -> None:
        async with asyncio.timeout(SECONDS):
            async for message in pubsub.listen():
                if message["type"] == "message" and message["data"] == name.encode():
                    return

    try:
        yield next_event
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped


# The link


async def test_a_write_a_full_redis_refuses_is_raised_as_unavailable_with_its_reply(
    make_link: Callable[..., RedisLink], redis_client: aioredis.Redis
) -> None:
    link = make_link()
    await fill(redis_client)
    with pytest.raises(UNREACHABLE) as refused:
        await link.client.set("sluice:test:a", "1")
    assert isinstance(refused.value, RedisRefusedError)
    assert str(refused.value).startswith("OOM command not allowed")


async def test_a_refusal_among_a_pipelines_replies_is_raised_as_unavailable(
    make_link: Callable[..., RedisLink], redis_client: aioredis.Redis
) -> None:
    link = make_link()
    await fill(redis_client)
    pipe = link.client.pipeline(transaction=False)
    pipe.get("sluice:test:b")
    pipe.set("sluice:test:b", "1")
    with pytest.raises(RedisRefusedError):
        await pipe.execute()


async def test_a_refusal_to_a_packed_command_is_raised_as_unavailable(
    make_link: Callable[..., RedisLink], redis_client: aioredis.Redis
) -> None:
    """The flusher's and the followers' path, which reads replies off the connection itself."""
    client = make_link().dedicated(None)
    await fill(redis_client)
    try:
        command = hiredis.pack_command(("SET", "sluice:test:c", "1"))  # type: ignore[arg-type]  # its stub says a 1-tuple
        with pytest.raises(RedisRefusedError):
            await call_packed(client, command, SECONDS)
    finally:
        await client.aclose()


async def test_an_error_of_the_command_itself_is_not_taken_for_redis_unavailable(
    make_link: Callable[..., RedisLink],
) -> None:
    link = make_link()
    await link.client.set("sluice:test:d", "a string")
    with pytest.raises(ResponseError) as wrong:
        await link.client.hgetall("sluice:test:d")  # a bug: WRONGTYPE
    assert not isinstance(wrong.value, UNREACHABLE)


async def test_a_script_redis_does_not_have_is_left_for_redis_py_to_send(make_link: Callable[..., RedisLink]) -> None:
    link = make_link()
    with pytest.raises(NoScriptError) as missing:
        await link.client.evalsha("0" * 40, 0)
    assert not isinstance(missing.value, UNREACHABLE)


async def test_the_link_stays_down_while_redis_refuses_writes_though_it_answers_ping(
    make_link: Callable[..., RedisLink], redis_client: aioredis.Redis
) -> None:
    link = make_link()
    await fill(redis_client)
    with pytest.raises(RedisRefusedError) as refused:
        await link.client.set("sluice:test:e", "1")
    link.failed(refused.value)
    assert await link.client.ping()

    assert not await link.wait_up(1.0)  # a PING answered by then: the health loop probes every 0.25 s
    await free(redis_client)
    assert await link.wait_up(SECONDS)


async def test_a_connection_that_reached_a_replica_is_made_again_before_its_next_command(
    make_link: Callable[..., RedisLink], redis_client: aioredis.Redis
) -> None:
    """After a failover the old primary answers READONLY on every connection made to it before."""
    link = make_link()
    await link.client.ping()
    (connection,) = link.client.connection_pool._available_connections
    await redis_client.replicaof("127.0.0.1", free_port())  # a primary nobody runs: the data stays
    try:
        with pytest.raises(RedisRefusedError, match=r"^READONLY"):
            await link.client.set("sluice:test:f", "1")
    finally:
        await redis_client.replicaof("NO", "ONE")

    assert ended_by_server(connection)


async def test_the_health_loop_outlives_a_probe_that_fails_for_a_bug(
    make_link: Callable[..., RedisLink], redis_client: aioredis.Redis
) -> None:
    """An ACL that denies the probe's SET: said in the logs, and the probe tried again until it is lifted."""
    link = make_link()
    with capture_logs() as logs:
        await redis_client.acl_setuser("default", enabled=True, nopass=True, commands=["-set"], reset=False)
        link.failed(ConnectionError("lost"))
        try:
            assert not await link.wait_up(1.0)
        finally:
            await redis_client.acl_setuser("default", enabled=True, nopass=True, commands=["+set"], reset=False)
        assert await link.wait_up(SECONDS)
    assert "redis_probe_failed" in [entry["event"] for entry in logs]


# Users of the link


async def test_with_redis_full_breaker_updates_are_kept_in_memory(
    make_link: Callable[..., RedisLink], redis_client: aioredis.Redis
) -> None:
    store = RedisBreakerStore(make_link())
    await fill(redis_client)

    def failed_once(record: BreakerRecord) -> BreakerRecord:
        return BreakerRecord(record.failures + 1, record.open_until, record.trial_since)

    assert (await store.update("upstream-a", failed_once)).failures == 1
    assert (await store.read("upstream-a")).failures == 1  # the local record, while Redis refuses


async def test_a_give_back_a_full_redis_refused_is_given_back_once_it_takes_writes(
    make_link: Callable[..., RedisLink], redis_client: aioredis.Redis
) -> None:
    link = make_link()
    store = RedisLimitStore(link, retry_after=1)
    one_stream = KeyLimits(max_streams=1)
    try:
        slot = await store.take("key-a", one_stream, requests=1, tokens=0, streams=1)
        assert slot.allowed
        await fill(redis_client)
        await store.give_back("key-a", one_stream, tokens=0, streams=1, slot=slot)
        await free(redis_client)
        assert store._settling is not None
        await asyncio.wait_for(store._settling, SECONDS)

        assert (await store.take("key-a", one_stream, requests=1, tokens=0, streams=1)).allowed
    finally:
        await store.close()


async def test_the_lease_renewer_survives_a_full_redis_and_renews_once_it_takes_writes(
    make_store: Callable[..., RedisStreamStore], redis_client: aioredis.Redis
) -> None:
    producer = make_store()
    assert await producer.create("renewed")
    async with key_events(redis_client, KEYS.lease("renewed")) as next_event:
        await fill(redis_client)
        await went_down(producer._link)  # the renewal was refused
        await free(redis_client)

        await next_event("set")  # renewed again (a lease renewed never more leaves the stream for lost)


async def test_events_a_full_redis_refused_reach_readers_elsewhere_once_it_takes_writes(
    make_store: Callable[..., RedisStreamStore], redis_client: aioredis.Redis
) -> None:
    """Refused events were dropped, and the next ones stored after a gap: the reader got resume_unavailable.

    Leases too long to renew during the test: the flush alone finds Redis refusing. A renewal finds
    it refusing too and takes the link down whatever the flush did: with 30 s leases one came 10 s
    in, within milliseconds of `went_down` giving up, and when first it hid an unflagged script
    whose writes Redis refused one by one (the link left up, the events dropped).
    """
    producer, elsewhere = make_store(lease=UNRENEWED), make_store(lease=UNRENEWED)
    assert await producer.create("refused")
    async with key_events(redis_client, KEYS.events("refused")) as next_event:
        await producer.append("refused", event(1))
        await next_event("xadd")
    await fill(redis_client)
    for seq in (2, 3):
        await producer.append("refused", event(seq))
    await went_down(producer._link)  # the flush was refused
    await free(redis_client)
    assert await producer._link.wait_up(SECONDS)
    await producer.append("refused", event(4))
    await producer.finish("refused")

    assert await asyncio.wait_for(read_all(elsewhere, "refused"), SECONDS) == [1, 2, 3, 4]


async def test_a_lease_lapsed_while_redis_refuses_writes_is_an_outage_to_readers_elsewhere_not_a_lost_producer(
    make_store: Callable[..., RedisStreamStore], redis_client: aioredis.Redis
) -> None:
    """The producer is alive but cannot renew: its readers wait for Redis rather than end with generation_lost."""
    producer, elsewhere = make_store(), make_store()
    assert await producer.create("lapsed")
    async with key_events(redis_client, KEYS.events("lapsed")) as next_event:
        await producer.append("lapsed", event(1))
        await next_event("xadd")
    async with key_events(redis_client, KEYS.lease("lapsed")) as next_event:
        await fill(redis_client)
        await next_event("expired")  # not renewed: refused

    with pytest.raises(StoreUnavailableError):
        await elsewhere.wait("lapsed", 1)


async def test_the_lease_renewer_outlives_an_error_of_its_own_commands(
    make_store: Callable[..., RedisStreamStore], redis_client: aioredis.Redis
) -> None:
    """A bug, not an outage (here a reader's record of the wrong type): said, and the renewals go on."""
    producer = make_store()
    assert await producer.create("wrong")
    with capture_logs() as logs:
        async with key_events(redis_client, KEYS.lease("wrong")) as next_event:
            await redis_client.hset(KEYS.read("wrong"), "a", "b")  # the renewal's GET of it: WRONGTYPE
            await next_event("set")
            await next_event("set")  # the renewal that failed
            await redis_client.delete(KEYS.read("wrong"))

            await next_event("set")
            await next_event("set")
    assert "redis_renew_failed" in [entry["event"] for entry in logs]
    assert producer._link.up
