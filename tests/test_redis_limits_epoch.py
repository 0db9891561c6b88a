"""A key's counts across a Redis restart: tokens come back in their epoch; each instance's slots are counted again."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from server.auth.gate import Lease
from server.auth.gateway_keys import GatewayKey
from server.auth.limits import Decision, KeyLimits
from server.shared.limit_store import RedisLimitStore
from server.shared.link import RedisLink
from tests.conftest import make_settings
from tests.support.processes import Simulator
from tests.support.security import KEY_STREAMS, bearer, start_keyed_gateway
from tests.support.servers import RedisServer

TWO_STREAMS = KeyLimits(max_streams=2)
OWED_BOUND = 15.0  # seconds; a command gives up after 2, the health loop pings every 0.25
SECONDS = 5.0  # unrelated bound: a connection's end is read as soon as the loop runs


@pytest.fixture
async def make_store(redis_server: RedisServer) -> AsyncIterator[Callable[..., RedisLimitStore]]:
    """Limit stores on links of their own, as instances have; closed after.

    `watching=False`: the link's health loop is not started, so once a command fails the store
    sees Redis down (and keeps what it owes) until the test starts it (`store._link.start()`).
    """
    made: list[tuple[RedisLink, RedisLimitStore]] = []

    def make(*, watching: bool = True) -> RedisLimitStore:
        link = RedisLink(make_settings(redis={"url": redis_server.url}).redis)
        if watching:
            link.start()
        store = RedisLimitStore(link, retry_after=1)
        made.append((link, store))
        return store

    yield make
    for link, store in made:
        await store.close()
        await link.close()


async def stream(store: RedisLimitStore, name: str, limits: KeyLimits = TWO_STREAMS) -> Decision:
    """Take a request's stream slot in Redis, as take_limits does: its decision, which its end gives back."""
    decision = await store.take(name, limits, requests=1, tokens=0, streams=1)
    assert not decision.counted_here  # the count under test is Redis's, not this process's
    return decision


async def streams(store: RedisLimitStore, name: str, count: int) -> list[Decision]:
    """`count` streams of the key, each allowed."""
    taken = [await stream(store, name) for _ in range(count)]
    assert [decision.allowed for decision in taken] == [True] * count
    return taken


async def end(store: RedisLimitStore, name: str, slot: Decision, limits: KeyLimits = TWO_STREAMS) -> None:
    """The stream whose slot `slot` took ends: the slot goes back to Redis, which answers."""
    await store.give_back(name, limits, tokens=0, streams=1, slot=slot)
    assert not store._owed


async def restart_empty(redis_server: RedisServer, *stores: RedisLimitStore) -> None:
    """Redis dies and comes back without its data, as one run without persistence (the advised way)."""
    redis_server.kill()
    redis_server.start()
    await idle_connections_ended(*stores)


async def restart_with_data(redis_server: RedisServer, *stores: RedisLimitStore) -> None:
    """Redis dies and comes back with what it saved (an RDB file, as with persistence on)."""
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await client.save()
    finally:
        await client.aclose()
    redis_server.kill()
    redis_server.start()
    await idle_connections_ended(*stores)


async def idle_connections_ended(*stores: RedisLimitStore) -> None:
    """Return once the stores' loops have read the end of their idle connections, which Redis closed dying.

    Their pools then replace them before their next command, as in an instance whose loop ran
    while Redis restarted (this test's loop was blocked meanwhile); else that command fails.
    """
    async with asyncio.timeout(SECONDS):
        for store in stores:
            for connection in store._link.client.connection_pool._available_connections:
                if connection._reader is not None:
                    with contextlib.suppress(ConnectionError):
                        await connection._reader.read(1)  # b"": nothing else comes on an idle connection


async def test_streams_from_before_redis_restarted_empty_free_no_slot_taken_since(
    make_store: Callable[..., RedisLimitStore], redis_server: RedisServer
) -> None:
    # Their give-backs freed the new hash's slots, which the streams started since still hold: a
    # third stream ran on a key of two for as long as the old ones ended.
    here, elsewhere = make_store(), make_store()
    old = await streams(here, "key-restart", 2)
    await restart_empty(redis_server, here, elsewhere)
    await streams(elsewhere, "key-restart", 2)
    for slot in old:
        await end(here, "key-restart", slot)
    assert not (await stream(elsewhere, "key-restart")).allowed


async def test_after_an_empty_restart_an_instances_live_streams_count_again_at_its_next_renewal(
    make_store: Callable[..., RedisLimitStore], redis_server: RedisServer
) -> None:
    # The restart lost the instance's count; its next renewal sets it again to every slot it holds,
    # so the key does not run its max_streams again beside the streams still running.
    store = make_store()
    old = await streams(store, "key-restart-here", 2)
    await restart_empty(redis_server, store)
    await store.renew_leases()
    assert not (await stream(store, "key-restart-here")).allowed
    for slot in old:
        await end(store, "key-restart-here", slot)
    await streams(store, "key-restart-here", 2)


async def test_a_stream_from_before_an_empty_restart_frees_its_slot_when_it_ends(
    make_store: Callable[..., RedisLimitStore], redis_server: RedisServer
) -> None:
    # Counted again after the restart, it must also leave the count when it ends, whatever its epoch.
    store, one = make_store(), KeyLimits(max_streams=1)
    old = await stream(store, "key-restart-new", one)
    assert old.allowed
    await restart_empty(redis_server, store)
    await store.renew_leases()  # the renewal counts it again
    assert not (await stream(store, "key-restart-new", one)).allowed
    await end(store, "key-restart-new", old, one)
    assert (await stream(store, "key-restart-new", one)).allowed


async def test_after_redis_restarted_empty_every_slot_is_freed_when_its_stream_ends(
    make_store: Callable[..., RedisLimitStore], redis_server: RedisServer
) -> None:
    store = make_store()
    old = await streams(store, "key-restart-both", 1)
    await restart_empty(redis_server, store)
    await store.renew_leases()
    new = await streams(store, "key-restart-both", 1)
    assert not (await stream(store, "key-restart-both")).allowed  # one from before, one since
    for slot in old + new:
        await end(store, "key-restart-both", slot)
    await streams(store, "key-restart-both", 2)


async def test_tokens_reserved_before_redis_restarted_empty_come_back_to_no_hash_made_since(
    make_store: Callable[..., RedisLimitStore], redis_server: RedisServer
) -> None:
    # Their settlement gave the new hash tokens it never lent: more than tpm went upstream that minute.
    here, elsewhere = make_store(), make_store()
    limits = KeyLimits(tpm=120)  # two tokens a second refill
    reserved = await here.take("key-restart-lent", limits, requests=0, tokens=58, streams=0)
    assert reserved.allowed
    await restart_empty(redis_server, here, elsewhere)
    assert (await elsewhere.take("key-restart-lent", limits, requests=0, tokens=58, streams=0)).allowed
    await here.give_back("key-restart-lent", limits, tokens=48, streams=0, reservation=reserved)  # used 10
    assert not here._owed
    usage = await elsewhere.usage("key-restart-lent", limits)
    assert usage is not None
    assert usage.tokens > 40  # elsewhere's 58, less what refilled since; 10 when given the old 48 (for 9 s)


async def test_a_requests_tokens_reserved_since_an_empty_restart_settle_in_the_new_hash_whatever_its_slots_epoch(
    make_store: Callable[..., RedisLimitStore], redis_server: RedisServer
) -> None:
    # A request's slot and its reservation are two takes: given back in the slot's epoch, the
    # tokens it reserved in the new hash and did not use stayed taken there.
    store, limits = make_store(), KeyLimits(tpm=120, max_streams=2)  # two tokens a second refill
    slot = await store.take("key-restart-tokens", limits, requests=1, tokens=0, streams=1)
    assert slot.allowed
    lease = Lease(store, GatewayKey("key-restart-tokens", b"", None, limits), slot=slot)
    await restart_empty(redis_server, store)
    assert await lease.reserve({"messages": [], "max_tokens": 50}) is None  # 58 tokens, with the prompt's 8
    await lease.release({"total_tokens": 10})
    assert not store._owed
    usage = await store.usage("key-restart-tokens", limits)
    assert usage is not None
    assert usage.tokens <= 10  # what it used, less what refilled since; 58 while unsettled (for 24 s)


async def test_a_give_back_after_redis_restarted_with_its_data_frees_the_slot(
    make_store: Callable[..., RedisLimitStore], redis_server: RedisServer
) -> None:
    # The hash came back with its epoch: the slots in it are the ones its streams took.
    store = make_store()
    slots = await streams(store, "key-saved", 2)
    await restart_with_data(redis_server, store)
    await end(store, "key-saved", slots[0])
    assert (await stream(store, "key-saved")).allowed


async def test_tokens_reserved_before_redis_restarted_with_its_data_come_back_after_other_takes(
    make_store: Callable[..., RedisLimitStore], redis_server: RedisServer
) -> None:
    # The hash keeps its epoch through a restart with its data and through every take since.
    here, elsewhere = make_store(), make_store()
    limits = KeyLimits(tpm=120)  # two tokens a second refill
    reserved = await here.take("key-saved-tokens", limits, requests=0, tokens=58, streams=0)
    await restart_with_data(redis_server, here, elsewhere)
    assert (await elsewhere.take("key-saved-tokens", limits, requests=0, tokens=1, streams=0)).allowed
    await here.give_back("key-saved-tokens", limits, tokens=48, streams=0, reservation=reserved)  # used 10
    usage = await elsewhere.usage("key-saved-tokens", limits)
    assert usage is not None
    assert usage.tokens < 30  # 10 and 1 used, less what refilled; 59 when the 48 never came back


async def test_a_give_back_owed_while_redis_was_down_frees_nothing_once_it_came_back_empty(
    make_store: Callable[..., RedisLimitStore], redis_server: RedisServer
) -> None:
    # Sent once Redis answered, it freed a slot of the hash that takes made meanwhile.
    here, elsewhere = make_store(watching=False), make_store()
    (slot,) = await streams(here, "key-owed", 1)
    redis_server.kill()
    await here.give_back("key-owed", TWO_STREAMS, tokens=0, streams=1, slot=slot)  # owed until Redis answers
    redis_server.start()
    await streams(elsewhere, "key-owed", 2)
    here._link.start()  # Redis answers `here` again: what it owed goes now
    settling = here._settling
    assert settling is not None
    await asyncio.wait_for(settling, OWED_BOUND)
    assert not (await stream(elsewhere, "key-owed")).allowed


async def test_a_keyed_request_gives_its_slot_back_to_redis_in_the_epoch_its_take_returned(
    simulator: Simulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    # The gateway's part: the request's lease names its slot's take. Named by nothing, the give-back
    # freed nothing, and the key, at its one stream, was refused on every instance from then on.
    env = {"SLUICE_REDIS_URL": redis_server.url}
    chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi\n#sim tokens=2"}]}
    statuses = []
    with (
        start_keyed_gateway(tmp_path, simulator, env=env) as first,
        start_keyed_gateway(tmp_path, simulator, env=env) as second,
    ):
        async with aiohttp.ClientSession() as http:
            # A non-streamed answer goes out after its request gave its slot back (the chain's `settle`).
            for gateway in (first, second, first):
                url = gateway.url + "/v1/chat/completions"
                async with http.post(url, json=chat, headers=bearer(KEY_STREAMS)) as response:
                    statuses.append(response.status)
    assert statuses == [200, 200, 200]
