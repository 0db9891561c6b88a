"""Per-key limits counted in a real redis-server by Lua scripts: two links stand for two instances."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from server.auth.limits import KeyLimits, Usage
from server.errors import ServiceUnavailableError
from server.shared.limit_store import RedisLimitStore
from server.shared.limits import TAKEN_SECONDS, LimitsUnavailableError, RedisLimitBuckets
from server.shared.link import RedisLink
from tests.conftest import make_settings
from tests.support.servers import RedisServer


@pytest.fixture
async def make_buckets(redis_server: RedisServer) -> AsyncIterator[Callable[[], RedisLimitBuckets]]:
    links: list[RedisLink] = []

    def make() -> RedisLimitBuckets:
        link = RedisLink(make_settings(redis={"url": redis_server.url}).redis)
        links.append(link)
        return RedisLimitBuckets(link)

    yield make
    for link in links:
        await link.close()


def one_request(**limits: Any) -> dict[str, Any]:
    """A take's arguments: one request, no limits but those given, and an id of its own (or `take_id`)."""
    return {
        "rpm": 0,
        "tpm": 0,
        "max_streams": 0,
        "requests": 1,
        "tokens": 0,
        "streams": 0,
        "take_id": secrets.token_urlsafe(12),
        **limits,
    }


async def test_a_keys_requests_per_minute_are_shared_by_every_instance(
    make_buckets: Callable[[], RedisLimitBuckets],
) -> None:
    first, second = make_buckets(), make_buckets()
    allowed = [(await (first if n % 2 else second).take("key-a", **one_request(rpm=3))).allowed for n in range(4)]
    refused = await first.take("key-a", **one_request(rpm=3))
    assert allowed == [True, True, True, False]
    assert refused.exceeded == "requests"
    # One request per 20 s refills; the fourth came at once, so about 20 s remain.
    assert 19 < refused.retry_after <= 20


async def test_concurrent_takes_from_two_instances_never_exceed_the_limit(
    make_buckets: Callable[[], RedisLimitBuckets],
) -> None:
    first, second = make_buckets(), make_buckets()
    takes = [(first if n % 2 else second).take("key-b", **one_request(rpm=10)) for n in range(60)]
    results = await asyncio.gather(*takes)
    assert sum(result.allowed for result in results) == 10


async def test_keys_are_counted_apart(make_buckets: Callable[[], RedisLimitBuckets]) -> None:
    buckets = make_buckets()
    assert (await buckets.take("key-c", **one_request(rpm=1))).allowed
    assert (await buckets.take("key-d", **one_request(rpm=1))).allowed
    assert not (await buckets.take("key-c", **one_request(rpm=1))).allowed


async def test_tokens_are_reserved_then_settled_with_what_was_used(
    make_buckets: Callable[[], RedisLimitBuckets],
) -> None:
    first, second = make_buckets(), make_buckets()
    reserved = await first.take("key-e", **one_request(tpm=1000, tokens=800))
    assert reserved.allowed
    refused = await second.take("key-e", **one_request(tpm=1000, tokens=300))
    assert refused.exceeded == "tokens"
    await first.give_back(  # used 300 of the 800 reserved
        "key-e", tpm=1000, tokens=500, streams=0, give_back_id="e-1", streams_epoch=0, tokens_epoch=reserved.epoch
    )
    assert (await second.take("key-e", **one_request(tpm=1000, tokens=300))).allowed


async def test_concurrent_streams_are_capped_across_instances_and_released(
    make_buckets: Callable[[], RedisLimitBuckets],
) -> None:
    first, second = make_buckets(), make_buckets()
    slot = await first.take("key-f", **one_request(max_streams=1, streams=1))
    assert slot.allowed
    refused = await second.take("key-f", **one_request(max_streams=1, streams=1))
    assert refused.exceeded == "streams"
    await first.give_back(
        "key-f", tpm=0, tokens=0, streams=1, give_back_id="f-1", streams_epoch=slot.epoch, tokens_epoch=0
    )
    assert (await second.take("key-f", **one_request(max_streams=1, streams=1))).allowed


async def test_a_take_over_the_whole_tpm_goes_on_a_full_bucket_and_its_refusal_says_when(
    make_buckets: Callable[[], RedisLimitBuckets],
) -> None:
    # Waiting for more than the bucket holds, such a take (a tpm below completion_reserve) would be refused for good.
    buckets = make_buckets()
    assert (await buckets.take("key-big", **one_request(tpm=60, tokens=100))).allowed
    refused = await buckets.take("key-big", **one_request(tpm=60, tokens=100))
    assert refused.exceeded == "tokens"
    assert 99 < refused.retry_after <= 100  # the bucket full again: 40 owed and 60, a token a second


async def test_a_refused_take_takes_nothing(make_buckets: Callable[[], RedisLimitBuckets]) -> None:
    buckets = make_buckets()
    assert (await buckets.take("key-g", **one_request(rpm=5, tpm=100, tokens=100))).allowed
    refused = await buckets.take("key-g", **one_request(rpm=5, tpm=100, tokens=50))
    assert refused.exceeded == "tokens"
    assert 3.9 < refused.requests_level <= 4.1  # the refused request was not counted


async def test_redis_down_is_reported_so_the_caller_can_fail_open(
    make_buckets: Callable[[], RedisLimitBuckets], redis_server: RedisServer
) -> None:
    buckets = make_buckets()
    redis_server.kill()
    with pytest.raises(LimitsUnavailableError):
        await buckets.take("key-h", **one_request(rpm=1))


async def test_usage_reads_a_keys_counts_from_redis_and_is_unknown_while_redis_is_down(
    redis_server: RedisServer,
) -> None:
    link = RedisLink(make_settings(redis={"url": redis_server.url}).redis)
    store = RedisLimitStore(link, retry_after=1)
    limits = KeyLimits(rpm=6, tpm=60, max_streams=3)  # one request per 10 s and a token per second refill
    try:
        assert (await store.take("key-u", limits, requests=1, tokens=50, streams=1)).allowed
        usage = await store.usage("key-u", limits)
        assert usage is not None
        assert (usage.streams, usage.requests) == (1, 1)
        assert 40 <= usage.tokens <= 50  # a bound far from how long the two reads take
        assert await store.usage("key-never-used", limits) == Usage(streams=0, requests=0, tokens=0)
        redis_server.stop()
        async with asyncio.timeout(10):  # unrelated bound: the read gives up on its own within a second
            assert await store.usage("key-u", limits) is None
    finally:
        await link.close()


@contextlib.contextmanager
def stalled(redis_server: RedisServer) -> Iterator[None]:
    """Redis frozen (SIGSTOP) for the block, its data kept: a stall, a blip, no instance dies."""
    assert redis_server.process is not None
    redis_server.process.signal(signal.SIGSTOP)
    try:
        yield
    finally:
        redis_server.process.signal(signal.SIGCONT)


@pytest.fixture
async def make_store(redis_server: RedisServer) -> AsyncIterator[Callable[..., RedisLimitStore]]:
    """Limit stores on links of their own (with their health loops), as instances have; closed after.

    Other `redis` settings as keywords: `fail_open=False` makes one that refuses 503 while Redis is
    unreachable; `slot_lease_seconds` sets its leases on stream slots.
    """
    made: list[tuple[RedisLink, RedisLimitStore]] = []

    def make(**redis: Any) -> RedisLimitStore:
        link = RedisLink(make_settings(redis={"url": redis_server.url, **redis}).redis)
        link.start()
        store = RedisLimitStore(link, retry_after=1)
        made.append((link, store))
        return store

    yield make
    for link, store in made:
        await store.close()
        await link.close()


ONE_STREAM = KeyLimits(max_streams=1)
OWED_BOUND = 15.0  # seconds; a command gives up after 2, the health loop pings every 0.25


async def test_a_slot_given_back_while_redis_stalls_is_given_back_once_it_answers(
    make_store: Callable[..., RedisLimitStore], redis_server: RedisServer
) -> None:
    # Given back to this process instead, it stayed taken in Redis for good: the key, at its
    # max_streams, was refused on every instance from then on.
    here, elsewhere = make_store(), make_store()
    slot = await here.take("key-stall", ONE_STREAM, requests=1, tokens=0, streams=1)
    assert slot.allowed
    with stalled(redis_server):
        await here.give_back("key-stall", ONE_STREAM, tokens=0, streams=1, slot=slot)
    settling = here._settling  # what gives Redis back what it is owed, once it answers
    assert settling is not None
    await asyncio.wait_for(settling, OWED_BOUND)
    assert (await elsewhere.take("key-stall", ONE_STREAM, requests=1, tokens=0, streams=1)).allowed


async def test_a_slot_taken_while_redis_was_away_is_given_back_here_not_to_redis(
    make_store: Callable[..., RedisLimitStore], redis_server: RedisServer
) -> None:
    # Given back to Redis, it freed the slot another instance's stream holds there.
    here, elsewhere = make_store(), make_store()
    two = KeyLimits(max_streams=2)
    assert (await elsewhere.take("key-away", two, requests=1, tokens=0, streams=1)).allowed
    with stalled(redis_server):
        slot = await here.take("key-away", two, requests=1, tokens=0, streams=1)  # fail open
    assert slot.allowed
    assert await here._link.wait_up(OWED_BOUND)  # the stalled take marked Redis down; it answers again
    await here.give_back("key-away", two, tokens=0, streams=1, slot=slot)
    usage = await elsewhere.usage("key-away", two)
    assert usage is not None
    assert usage.streams == 1


async def test_a_refused_take_does_not_keep_the_keys_counts_alive(
    make_buckets: Callable[[], RedisLimitBuckets], redis_server: RedisServer
) -> None:
    # Clients retrying on 429 kept a dead instance's slots for good: each refusal renewed the hour.
    buckets = make_buckets()
    assert (await buckets.take("key-ttl", **one_request(max_streams=1, streams=1))).allowed
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await client.expire("sluice:limit:key-ttl", 100)
        assert not (await buckets.take("key-ttl", **one_request(max_streams=1, streams=1))).allowed
        assert 0 < await client.ttl("sluice:limit:key-ttl") <= 100
    finally:
        await client.aclose()


async def test_a_give_back_sent_again_under_its_id_is_applied_once(
    make_buckets: Callable[[], RedisLimitBuckets],
) -> None:
    # A give-back whose reply was lost is sent again: applied twice, the key had a slot and its tokens for free.
    buckets = make_buckets()
    taken = await buckets.take("key-once", **one_request(tpm=60, max_streams=2, tokens=60, streams=2))
    assert taken.allowed
    epoch = taken.epoch
    for _ in range(2):
        await buckets.give_back(
            "key-once", tpm=60, tokens=30, streams=1, give_back_id="once-1", streams_epoch=epoch, tokens_epoch=epoch
        )
    _, tokens, streams = await buckets.levels("key-once", rpm=0, tpm=60)
    assert streams == 1
    assert 30 <= tokens < 40  # a token a second refills; 60 when given back twice


async def test_a_give_back_redis_ran_while_its_reply_timed_out_is_counted_once(
    make_store: Callable[..., RedisLimitStore], redis_server: RedisServer
) -> None:
    # Redis frozen, the give-back waits in its socket and runs when Redis wakes, after the caller gave
    # up on its reply and owed it. Sent again and counted twice, the key's stream count fell below
    # its live streams (a stream over max_streams) and its tokens came back twice.
    here, elsewhere = make_store(), make_store()
    limits = KeyLimits(tpm=60, max_streams=2)  # a token a second refills
    # An earlier stream here ended as usual, so Redis has the give-back script, as in any gateway
    # that served a while (else the stalled try is refused NOSCRIPT when Redis wakes, and runs nothing).
    earlier = await here.take("key-lost", limits, requests=1, tokens=0, streams=1)
    assert earlier.allowed
    await here.give_back("key-lost", limits, tokens=0, streams=1, slot=earlier)
    taken = await here.take("key-lost", limits, requests=1, tokens=30, streams=1)
    assert taken.allowed
    assert (await elsewhere.take("key-lost", limits, requests=1, tokens=20, streams=1)).allowed
    with stalled(redis_server):
        # Used 5 of the 30 reserved (one take for both here: its slot's and its reservation's).
        await here.give_back("key-lost", limits, tokens=25, streams=1, slot=taken, reservation=taken)
    settling = here._settling
    assert settling is not None
    await asyncio.wait_for(settling, OWED_BOUND)
    usage = await elsewhere.usage("key-lost", limits)
    assert usage is not None
    assert usage.streams == 1  # elsewhere's, still live
    assert 25 - OWED_BOUND < usage.tokens <= 25  # here's 5 and elsewhere's 20, less what refilled; 0 if twice


async def answered(store: RedisLimitStore) -> None:
    """Wait until Redis answers `store` again and has taken what the store owed it meanwhile."""
    assert await store._link.wait_up(OWED_BOUND)
    if store._settling is not None:
        await asyncio.wait_for(store._settling, OWED_BOUND)


async def test_a_slot_redis_took_while_its_reply_timed_out_is_given_back_once_it_answers(
    make_store: Callable[..., RedisLimitStore], redis_server: RedisServer
) -> None:
    # Redis frozen, the take waits in its socket and runs when Redis wakes, after the caller gave up on
    # its reply and counted the stream here. Nothing gave that slot back in Redis: the key, at its
    # max_streams, was refused on every instance for as long as it was used.
    here, elsewhere = make_store(), make_store()
    # An earlier stream here, so Redis has the take script, as in any gateway that served a while
    # (else the stalled take is refused NOSCRIPT when Redis wakes, and takes nothing).
    earlier = await here.take("key-lost-take", ONE_STREAM, requests=1, tokens=0, streams=1)
    assert earlier.allowed
    await here.give_back("key-lost-take", ONE_STREAM, tokens=0, streams=1, slot=earlier)
    with stalled(redis_server):
        slot = await here.take("key-lost-take", ONE_STREAM, requests=1, tokens=0, streams=1)  # fail open
    assert slot.allowed
    await answered(here)
    await here.give_back("key-lost-take", ONE_STREAM, tokens=0, streams=1, slot=slot)  # it ends; its slot was here
    assert (await elsewhere.take("key-lost-take", ONE_STREAM, requests=1, tokens=0, streams=1)).allowed


async def test_a_take_refused_503_while_its_reply_timed_out_leaves_nothing_taken_once_redis_answers(
    make_store: Callable[..., RedisLimitStore], redis_server: RedisServer
) -> None:
    # Fail-closed, the request was refused, yet Redis kept its request, its tokens and its slot.
    here, elsewhere = make_store(fail_open=False), make_store()
    limits = KeyLimits(rpm=60, tpm=60, max_streams=1)  # a request and a token a second refill
    assert (await here.take("key-refused-take", limits, requests=0, tokens=0, streams=0)).allowed  # loads the script
    with stalled(redis_server), pytest.raises(ServiceUnavailableError):
        await here.take("key-refused-take", limits, requests=1, tokens=50, streams=1)
    await answered(here)
    assert await elsewhere.usage("key-refused-take", limits) == Usage(streams=0, requests=0, tokens=0)


# A take whose reply was lost, undone by its id (RedisLimitStore sends the undo once Redis answers).
LOST = one_request(rpm=60, tpm=60, max_streams=2, tokens=50, streams=1, take_id="lost-1")


async def test_an_undo_gives_back_what_its_take_took(make_buckets: Callable[[], RedisLimitBuckets]) -> None:
    buckets = make_buckets()
    assert (await buckets.take("key-undo", **LOST)).allowed
    assert (await buckets.take("key-undo", **one_request(rpm=60, tpm=60, max_streams=2, tokens=5, streams=1))).allowed
    await buckets.undo("key-undo", rpm=60, tpm=60, requests=1, tokens=50, streams=1, take_id="lost-1")
    requests, tokens, streams = await buckets.levels("key-undo", rpm=60, tpm=60)
    assert streams == 1  # the other take's
    assert 55 <= tokens < 60  # the other take's 5 still taken, less what refilled (a token a second)
    assert 59 <= requests < 60


async def test_an_undo_sent_again_gives_back_once(make_buckets: Callable[[], RedisLimitBuckets]) -> None:
    # Its reply lost in turn, an undo is sent again: applied twice, the key had a slot and tokens for free.
    buckets = make_buckets()
    assert (await buckets.take("key-undo-twice", **LOST)).allowed
    assert (
        await buckets.take("key-undo-twice", **one_request(rpm=60, tpm=60, max_streams=2, tokens=10, streams=1))
    ).allowed
    for _ in range(2):
        await buckets.undo("key-undo-twice", rpm=60, tpm=60, requests=1, tokens=50, streams=1, take_id="lost-1")
    _, tokens, streams = await buckets.levels("key-undo-twice", rpm=60, tpm=60)
    assert streams == 1
    assert 50 <= tokens < 55  # a token a second refills; 60 when given back twice


async def test_an_undo_of_a_take_that_took_nothing_gives_back_nothing(
    make_buckets: Callable[[], RedisLimitBuckets],
) -> None:
    # Refused, or never run (its command lost with the connection), the take left the slot to another.
    buckets = make_buckets()
    assert (await buckets.take("key-undo-none", **one_request(max_streams=1, streams=1))).allowed
    refused = await buckets.take("key-undo-none", **one_request(max_streams=1, streams=1, take_id="refused-1"))
    assert refused.exceeded == "streams"
    await buckets.undo("key-undo-none", rpm=0, tpm=0, requests=1, tokens=0, streams=1, take_id="refused-1")
    _, _, streams = await buckets.levels("key-undo-none", rpm=0, tpm=0)
    assert streams == 1


async def test_a_take_that_runs_after_its_undo_takes_nothing(make_buckets: Callable[[], RedisLimitBuckets]) -> None:
    # Still on its way when the undo came (a connection slower than the next), it would take for good.
    buckets = make_buckets()
    await buckets.undo("key-undo-first", rpm=60, tpm=60, requests=1, tokens=50, streams=1, take_id="lost-1")
    await buckets.take("key-undo-first", **LOST)
    assert await buckets.levels("key-undo-first", rpm=60, tpm=60) == (60, 60, 0)


async def test_a_takes_id_is_kept_in_redis_for_taken_seconds(
    make_buckets: Callable[[], RedisLimitBuckets], redis_server: RedisServer
) -> None:
    # Every take records its id: kept for good, they filled Redis; undone ids too.
    buckets = make_buckets()
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        assert (await buckets.take("key-undo-ttl", **one_request(take_id="kept-1"))).allowed
        await buckets.undo("key-undo-ttl", rpm=0, tpm=0, requests=1, tokens=0, streams=0, take_id="kept-2")
        for take_id in ("kept-1", "kept-2"):
            assert 0 < await client.ttl(f"sluice:limit-taken:{take_id}") <= TAKEN_SECONDS
    finally:
        await client.aclose()


async def test_failing_closed_still_serves_a_key_without_limits_while_redis_is_unreachable(
    make_store: Callable[..., RedisLimitStore], redis_server: RedisServer
) -> None:
    # Fail closed protects a key's limits: a key with none was refused 503 limits_unavailable for nothing.
    store = make_store(fail_open=False)
    unlimited = KeyLimits()
    assert (await store.take("key-unlimited", unlimited, requests=0, tokens=0, streams=0)).allowed  # loads the script
    with stalled(redis_server):
        decision = await store.take("key-unlimited", unlimited, requests=1, tokens=0, streams=1)
    assert decision.allowed
    await store.give_back("key-unlimited", unlimited, tokens=0, streams=1, slot=decision)
    await answered(store)
