"""A key's stream slots in Redis are held under each instance's lease: a dead instance's come free."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from server.auth.limits import KeyLimits
from server.shared.limit_store import RedisLimitStore, _Owed
from server.shared.limits import IDLE_SECONDS, RedisLimitBuckets
from tests.support.processes import Simulator
from tests.support.security import KEY_STREAMS, bearer, start_keyed_gateway
from tests.support.servers import RedisServer
from tests.test_redis_limits import make_buckets, make_store, one_request, stalled
from tests.test_redis_refusals import redis_client

__all__ = ["make_buckets", "make_store", "redis_client"]  # fixtures, used by name

ONE_STREAM = KeyLimits(max_streams=1)
TWO_STREAMS = KeyLimits(max_streams=2)
OWED_BOUND = 15.0  # seconds; a command gives up after 2, the health loop pings every 0.25


def instance_of(store: RedisLimitStore) -> str:
    """The name under which the store's process holds slots in each key's hash."""
    return store._buckets.instance


async def stream(store: RedisLimitStore, name: str, limits: KeyLimits = ONE_STREAM) -> bool:
    """Whether a one-stream request of the key is allowed now (a slot taken if so)."""
    return (await store.take(name, limits, requests=1, tokens=0, streams=1)).allowed


async def test_a_slot_whose_instances_lease_lapsed_is_free_for_another_instance(
    make_buckets: Callable[[], RedisLimitBuckets], redis_client: aioredis.Redis
) -> None:
    dead, alive = make_buckets(), make_buckets()
    assert (await dead.take("key-dead", **one_request(max_streams=2, streams=1), stamp=1)).allowed
    assert (await dead.take("key-dead", **one_request(max_streams=2, streams=1), stamp=2)).allowed  # stamped
    assert not (await alive.take("key-dead", **one_request(max_streams=2, streams=1))).allowed
    await redis_client.hset("sluice:limit:key-dead", f"x:{dead.instance}", 0)  # its lease ran out
    assert (await alive.take("key-dead", **one_request(max_streams=2, streams=1))).allowed
    # The take swept the lapsed lease with its count and stamp: the hash does not grow with dead instances.
    assert await redis_client.hmget("sluice:limit:key-dead", [f"s:{dead.instance}", f"o:{dead.instance}"]) == [
        None,
        None,
    ]


async def test_a_give_back_frees_only_the_slots_it_names(make_store: Callable[..., RedisLimitStore]) -> None:
    here, elsewhere = make_store(), make_store()
    first = await here.take("key-some", TWO_STREAMS, requests=1, tokens=0, streams=1)
    assert first.allowed
    assert await stream(here, "key-some", TWO_STREAMS)
    await here.give_back("key-some", TWO_STREAMS, tokens=0, streams=1, slot=first)
    assert [await stream(elsewhere, "key-some", TWO_STREAMS) for _ in range(2)] == [True, False]


async def test_the_dashboard_counts_only_slots_under_a_live_lease(
    make_store: Callable[..., RedisLimitStore], redis_client: aioredis.Redis
) -> None:
    dead, reader = make_store(), make_store()
    assert await stream(dead, "key-usage", TWO_STREAMS)
    await redis_client.hset("sluice:limit:key-usage", f"x:{instance_of(dead)}", 0)
    usage = await reader.usage("key-usage", TWO_STREAMS)
    assert usage is not None
    assert usage.streams == 0


async def test_streams_counted_by_instances_from_before_leases_still_count(
    make_buckets: Callable[[], RedisLimitBuckets], redis_client: aioredis.Redis
) -> None:
    # During a rolling upgrade the older instances keep one shared count, field `s`.
    await redis_client.hset("sluice:limit:key-older", "s", 1)
    assert not (await make_buckets().take("key-older", **one_request(max_streams=1, streams=1))).allowed


async def test_an_instance_renewing_its_lease_keeps_its_slot_past_the_lease(
    make_store: Callable[..., RedisLimitStore], redis_client: aioredis.Redis
) -> None:
    lease = 0.6
    here, elsewhere = make_store(slot_lease_seconds=lease), make_store(slot_lease_seconds=lease)
    assert await stream(here, "key-renewed")
    field = f"x:{instance_of(here)}"
    first_lapse = float(await redis_client.hget("sluice:limit:key-renewed", field) or 0)
    # Time passing is the behaviour under test: past the first lease and one more, as Redis tells time.
    await asyncio.sleep(first_lapse + lease - await redis_time(redis_client))
    assert float(await redis_client.hget("sluice:limit:key-renewed", field) or 0) > first_lapse + lease
    assert not await stream(elsewhere, "key-renewed")


async def test_a_renewal_counts_again_the_slots_redis_let_lapse(
    make_store: Callable[..., RedisLimitStore], redis_client: aioredis.Redis
) -> None:
    # This process could not reach Redis (or was frozen) for a lease while its stream went on.
    here, elsewhere = make_store(), make_store()
    assert await stream(here, "key-lapsed")
    await redis_client.hdel("sluice:limit:key-lapsed", f"s:{instance_of(here)}", f"x:{instance_of(here)}")
    await here.renew_leases()
    assert not await stream(elsewhere, "key-lapsed")


async def test_a_renewal_sets_the_count_to_the_slots_the_instance_holds(
    make_store: Callable[..., RedisLimitStore], redis_client: aioredis.Redis
) -> None:
    # A count gone wrong (a give-back lost for good) is mended by the next renewal.
    here, elsewhere = make_store(), make_store()
    ended = await here.take("key-mended", TWO_STREAMS, requests=1, tokens=0, streams=1)
    assert await stream(here, "key-mended", TWO_STREAMS)
    await here.give_back("key-mended", TWO_STREAMS, tokens=0, streams=1, slot=ended)
    await redis_client.hset("sluice:limit:key-mended", f"s:{instance_of(here)}", 2)
    assert not await stream(elsewhere, "key-mended", TWO_STREAMS)
    await here.renew_leases()
    assert await stream(elsewhere, "key-mended", TWO_STREAMS)


async def test_a_renewal_sets_no_count_while_a_take_of_the_key_is_on_its_way(
    make_store: Callable[..., RedisLimitStore], redis_client: aioredis.Redis
) -> None:
    # Set from a count read before the take landed, it fell below the slots running.
    here, elsewhere = make_store(), make_store()
    assert await stream(here, "key-crossed", TWO_STREAMS)
    await redis_client.hset("sluice:limit:key-crossed", f"s:{instance_of(here)}", 2)  # the take on its way landed
    here._sending("key-crossed", 1)
    await here.renew_leases()
    assert not await stream(elsewhere, "key-crossed", TWO_STREAMS)


async def live_streams(buckets: RedisLimitBuckets, name: str) -> int:
    """The key's stream slots Redis counts now, every instance's."""
    return (await buckets.levels(name, rpm=0, tpm=0))[2]


async def test_a_renewal_crossed_by_a_take_sent_after_it_keeps_that_take_counted(
    make_buckets: Callable[[], RedisLimitBuckets],
) -> None:
    # The renewal read one slot (stamp 2); a take sent after it (stamp 3) landed first: set to one,
    # the count lost the take's slot, and the key ran more than max_streams until the next renewal.
    here = make_buckets()
    assert (await here.take("key-late-take", **one_request(max_streams=2, streams=1), stamp=1)).allowed
    assert (await here.take("key-late-take", **one_request(max_streams=2, streams=1), stamp=3)).allowed
    await here.renew([("key-late-take", 1, True)], stamp=2)
    assert await live_streams(here, "key-late-take") == 2


async def test_a_renewal_crossed_by_a_give_back_sent_after_it_keeps_that_slot_given_back(
    make_buckets: Callable[[], RedisLimitBuckets],
) -> None:
    # The count fell to 0 and stays, with its stamp, until the lease lapses: deleted, the renewal
    # found no count and set its stale one.
    here = make_buckets()
    taken = await here.take("key-late-give", **one_request(max_streams=1, streams=1), stamp=1)
    assert taken.allowed
    epoch = taken.epoch
    await here.give_back(
        "key-late-give", tpm=0, tokens=0, streams=1, give_back_id="late-1", streams_epoch=epoch, tokens_epoch=0, stamp=3
    )
    await here.renew([("key-late-give", 1, True)], stamp=2)
    assert await live_streams(here, "key-late-give") == 0


async def test_a_renewal_crossed_by_an_undo_sent_after_it_keeps_that_slot_given_back(
    make_buckets: Callable[[], RedisLimitBuckets],
) -> None:
    here = make_buckets()
    assert (await here.take("key-late-undo", **one_request(max_streams=2, streams=1), stamp=1)).allowed
    lost = one_request(max_streams=2, streams=1, take_id="lost-late")
    assert (await here.take("key-late-undo", **lost, stamp=2)).allowed  # its reply was lost
    await here.undo("key-late-undo", rpm=0, tpm=0, requests=1, tokens=0, streams=1, take_id="lost-late", stamp=4)
    await here.renew([("key-late-undo", 2, True)], stamp=3)
    assert await live_streams(here, "key-late-undo") == 1


async def test_a_renewal_not_crossed_sets_the_count(make_buckets: Callable[[], RedisLimitBuckets]) -> None:
    here = make_buckets()
    for stamp in (1, 2):
        assert (await here.take("key-set", **one_request(max_streams=3, streams=1), stamp=stamp)).allowed
    await here.renew([("key-set", 3, True)], stamp=3)
    assert await live_streams(here, "key-set") == 3


async def test_each_take_give_back_and_debt_of_a_store_is_stamped_after_the_renewals_read_before_it(
    make_store: Callable[..., RedisLimitStore],
) -> None:
    # The stamps the store sends, in the order it sends them: each change sent after a renewal's
    # read keeps that renewal from setting the count, whichever lands first.
    here = make_store()
    limits = KeyLimits(max_streams=3)
    first = await here.take("key-stamped", limits, requests=1, tokens=0, streams=1)
    read = next(here._stamps)  # a renewal reads one slot now; what follows lands before it
    assert await stream(here, "key-stamped", limits)
    await here._buckets.renew([("key-stamped", 1, True)], stamp=read)
    assert await live_streams(here._buckets, "key-stamped") == 2
    read = next(here._stamps)  # two slots held
    await here.give_back("key-stamped", limits, tokens=0, streams=1, slot=first)
    await here._buckets.renew([("key-stamped", 2, True)], stamp=read)
    assert await live_streams(here._buckets, "key-stamped") == 1
    read = next(here._stamps)  # one slot held, and a debt giving it back owed
    await here._send_debt("owed-1", _Owed("key-stamped", 0, 0, 1, 0, first.epoch))
    await here._buckets.renew([("key-stamped", 1, True)], stamp=read)
    assert await live_streams(here._buckets, "key-stamped") == 0


async def test_an_owed_give_back_keeps_its_key_on_its_way_until_it_is_settled(
    make_store: Callable[..., RedisLimitStore],
) -> None:
    # A give-back whose reply never came may have landed, or may still land: a renewal reading the
    # count meanwhile cannot tell, and set from it, a landed one's slot came back for a lease.
    here = make_store()
    taken = await here.take("key-owed-way", ONE_STREAM, requests=1, tokens=0, streams=1)
    await here._buckets.give_back(  # it reached Redis; its reply was lost
        "key-owed-way",
        tpm=0,
        tokens=0,
        streams=1,
        give_back_id="lost-reply",
        streams_epoch=taken.epoch,
        tokens_epoch=0,
        stamp=next(here._stamps),
    )
    here._owe("lost-reply", _Owed("key-owed-way", 0, 0, 1, 0, taken.epoch))
    await here.renew_leases()
    settling = here._settling
    assert settling is not None
    await asyncio.wait_for(settling, OWED_BOUND)
    assert await live_streams(here._buckets, "key-owed-way") == 0
    assert "key-owed-way" not in here._on_the_way


async def slot(buckets: RedisLimitBuckets, name: str, stamp: int, take_id: str | None = None) -> int:
    """Take one stream slot of `name` with `stamp` (and `take_id`); the epoch it took in."""
    extra = {"take_id": take_id} if take_id else {}
    taken = await buckets.take(name, **one_request(max_streams=100, streams=1, **extra), stamp=stamp)
    assert taken.allowed
    return taken.epoch


async def test_a_count_redis_lost_is_set_by_a_renewal_though_a_take_crossed_it(
    make_buckets: Callable[[], RedisLimitBuckets], redis_client: aioredis.Redis
) -> None:
    # The crossing take found no count: it made one of its own slot, which is no reason to keep it.
    here = make_buckets()
    for stamp in (1, 2, 3):
        await slot(here, "key-lost-crossed", stamp)
    await redis_client.flushall()  # Redis restarted empty
    await slot(here, "key-lost-crossed", 5)  # sent after the renewal read 3 slots, landed first
    await here.renew([("key-lost-crossed", 3, True)], stamp=4)
    # The three it read: the crossing take's slot is counted again by the next renewal (one short till then).
    assert await live_streams(here, "key-lost-crossed") == 3


async def test_a_late_change_sent_before_a_renewal_does_not_lower_the_stamp(
    make_buckets: Callable[[], RedisLimitBuckets],
) -> None:
    # A take cancelled on its way (stamp 2) lands after one sent after the renewal read (stamp 4).
    here = make_buckets()
    await slot(here, "key-late-low", 1)
    await slot(here, "key-late-low", 4)
    await slot(here, "key-late-low", 2, take_id="late-low")
    await here.renew([("key-late-low", 2, True)], stamp=3)
    assert await live_streams(here, "key-late-low") == 3


async def test_an_undo_of_a_take_that_never_ran_stamps_the_count(make_buckets: Callable[[], RedisLimitBuckets]) -> None:
    # Its slot was held here while its undo was owed: a renewal that read it must not set it.
    here = make_buckets()
    await slot(here, "key-never-ran", 1)
    await here.undo("key-never-ran", rpm=0, tpm=0, requests=1, tokens=0, streams=1, take_id="never", stamp=4)
    await here.renew([("key-never-ran", 2, True)], stamp=3)
    assert await live_streams(here, "key-never-ran") == 1


async def test_a_stamp_left_by_an_older_instances_sweep_is_swept(
    make_buckets: Callable[[], RedisLimitBuckets], redis_client: aioredis.Redis
) -> None:
    # An instance from before stamps sweeps a lapsed lease's count and lease, not its stamp.
    dead, alive = make_buckets(), make_buckets()
    await slot(dead, "key-old-sweep", 1)
    await slot(dead, "key-old-sweep", 2)  # on a count it has: stamped
    assert await redis_client.hexists("sluice:limit:key-old-sweep", f"o:{dead.instance}")
    await redis_client.hdel("sluice:limit:key-old-sweep", f"s:{dead.instance}", f"x:{dead.instance}")
    await slot(alive, "key-old-sweep", 1)
    assert not await redis_client.hexists("sluice:limit:key-old-sweep", f"o:{dead.instance}")


async def test_a_give_back_cancelled_on_its_way_is_given_back_once_redis_answers(
    make_store: Callable[..., RedisLimitStore], redis_server: RedisServer
) -> None:
    # The client left as its stream ended: dropped, the slot stayed held here, and each renewal kept
    # it counted in Redis for as long as the process lived.
    here, elsewhere = make_store(), make_store()
    slot = await here.take("key-cancelled", ONE_STREAM, requests=1, tokens=0, streams=1)
    with stalled(redis_server):
        giving = asyncio.create_task(here.give_back("key-cancelled", ONE_STREAM, tokens=0, streams=1, slot=slot))
        await asyncio.sleep(0)  # one loop turn: the give-back starts, and waits on the stalled Redis
        assert "key-cancelled" in here._on_the_way
        giving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await giving
    settling = here._settling
    assert settling is not None
    await asyncio.wait_for(settling, OWED_BOUND)
    await here.renew_leases()
    assert await stream(elsewhere, "key-cancelled")


async def test_a_refused_take_is_not_counted_by_the_next_renewal(make_store: Callable[..., RedisLimitStore]) -> None:
    here, elsewhere = make_store(), make_store()
    slot = await elsewhere.take("key-refused", ONE_STREAM, requests=1, tokens=0, streams=1)
    assert slot.allowed
    assert not await stream(here, "key-refused")
    await elsewhere.give_back("key-refused", ONE_STREAM, tokens=0, streams=1, slot=slot)
    await here.renew_leases()
    assert await stream(elsewhere, "key-refused")


async def test_a_slot_given_back_while_redis_stalls_is_not_counted_again_by_a_renewal(
    make_store: Callable[..., RedisLimitStore], redis_server: RedisServer
) -> None:
    here, elsewhere = make_store(), make_store()
    slot = await here.take("key-owed", ONE_STREAM, requests=1, tokens=0, streams=1)
    assert slot.allowed
    with stalled(redis_server):
        await here.give_back("key-owed", ONE_STREAM, tokens=0, streams=1, slot=slot)
    settling = here._settling
    assert settling is not None
    await asyncio.wait_for(settling, OWED_BOUND)
    await here.renew_leases()
    assert await stream(elsewhere, "key-owed")


async def test_a_debt_that_keeps_failing_does_not_hold_back_the_others(
    make_store: Callable[..., RedisLimitStore], redis_server: RedisServer
) -> None:
    here, elsewhere = make_store(), make_store()
    slot = await here.take("key-behind", ONE_STREAM, requests=1, tokens=0, streams=1)
    here._owe("broken", Broken())  # a debt whose every try fails for a bug, owed first
    with stalled(redis_server):
        await here.give_back("key-behind", ONE_STREAM, tokens=0, streams=1, slot=slot)
    async with asyncio.timeout(OWED_BOUND):
        # Nothing to await: the settle loop keeps the failing debt and says nothing when the other lands.
        while len(here._owed) > 1:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert await stream(elsewhere, "key-behind")


class Broken:
    """A debt whose sending always fails for a bug."""

    name = "key-broken"
    streams = 0

    async def send(self, buckets: RedisLimitBuckets, debt_id: str, stamp: int) -> None:
        raise RuntimeError("a bug")


async def test_a_key_whose_slots_all_came_back_is_withdrawn_then_forgotten(
    make_store: Callable[..., RedisLimitStore],
) -> None:
    # The renewal's list must not grow with every key this process ever served.
    here = make_store()
    slot = await here.take("key-done", ONE_STREAM, requests=1, tokens=0, streams=1)
    await here.give_back("key-done", ONE_STREAM, tokens=0, streams=1, slot=slot)
    await here.renew_leases()
    assert here._slots == {}


async def test_a_renewal_keeps_the_keys_hash_alive_while_it_holds_slots(
    make_store: Callable[..., RedisLimitStore], redis_client: aioredis.Redis
) -> None:
    # A stream may outlast the hash's idle hour; its slot must not be forgotten meanwhile.
    here = make_store()
    assert await stream(here, "key-long")
    await redis_client.expire("sluice:limit:key-long", 100)
    await here.renew_leases()
    assert await redis_client.ttl("sluice:limit:key-long") > IDLE_SECONDS - 60


async def redis_time(client: aioredis.Redis) -> float:
    seconds, micros = await client.time()
    return seconds + micros / 1_000_000


async def test_the_slot_of_an_instance_killed_mid_stream_comes_free_on_another_within_its_lease(
    simulator: Simulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    # One shared count kept a SIGKILLed instance's slots while the key was in use: the key, at its
    # one stream, was refused on every instance for good.
    lease = 6.0
    env = {"SLUICE_REDIS_URL": redis_server.url, "SLUICE_REDIS_SLOT_LEASE_SECONDS": str(lease)}
    long_chat = {
        "model": "gpt-4o",
        "stream": True,
        "messages": [{"role": "user", "content": "on\n#sim tokens=100000 gap_ms=50"}],
    }
    short_chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi\n#sim tokens=2"}]}
    with (
        start_keyed_gateway(tmp_path, simulator, env=env) as doomed,
        start_keyed_gateway(tmp_path, simulator, env=env) as survivor,
    ):
        async with aiohttp.ClientSession() as http:
            url = "/v1/chat/completions"
            async with http.post(doomed.url + url, json=long_chat, headers=bearer(KEY_STREAMS)) as held:
                assert held.status == 200
                await held.content.readline()  # its stream runs: the key's one slot is taken
                async with http.post(survivor.url + url, json=short_chat, headers=bearer(KEY_STREAMS)) as refused:
                    assert refused.status == 429
                doomed.process.signal(signal.SIGKILL)
                async with asyncio.timeout(lease + 10):  # the bound under test is the lease; 10 s of slack
                    while True:
                        async with http.post(survivor.url + url, json=short_chat, headers=bearer(KEY_STREAMS)) as retry:
                            if retry.status == 200:
                                break
                            assert retry.status == 429
                        await asyncio.sleep(0.1)  # a retry pace while the lease runs out, not a synchronisation
