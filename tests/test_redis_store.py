"""RedisStreamStore against a real redis-server: two stores in one process stand for two instances.

`producer` writes streams as the instance running their generations would; `elsewhere` reads
them as another instance would, from Redis only.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from server.settings import RedisSettings
from server.shared.link import RedisLink
from server.streams import redis_follow, redis_write
from server.streams.redis_keys import StreamKeys
from server.streams.redis_store import RedisStreamStore
from server.streams.store import EventsDroppedError, GenerationLostError, StoredEvent, StoreUnavailableError
from tests.conftest import make_settings
from tests.support.servers import RedisServer

KEYS = StreamKeys("sluice")


def redis_settings(url: str, **extra: Any) -> RedisSettings:
    return make_settings(redis={"url": url, **extra}).redis


MakeStore = Callable[..., "asyncio.Future[RedisStreamStore]"]
CLOSE_BOUND = 30.0  # seconds the stores of one test may take to close (each command's own limit is a few)


@pytest.fixture
async def make_store(redis_server: RedisServer) -> AsyncIterator[Callable[..., Any]]:
    """Build a store on its own link, as one instance would have; all are closed after the test."""
    made: list[tuple[RedisLink, RedisStreamStore]] = []

    async def make(*, connections: int = 2, lease: float = 1.0, **bounds: Any) -> RedisStreamStore:
        link = RedisLink(redis_settings(redis_server.url, reader_connections=connections, lease_seconds=lease))
        link.start()
        store = RedisStreamStore(link, make_settings(browser=bounds).browser)
        store.start()
        made.append((link, store))
        return store

    yield make
    try:
        # Bounded, with every task's stack on failure: a close that hangs is a bug to see (it once
        # ran into pytest-timeout's 120 s, whose signal then broke the worker's next test).
        async with asyncio.timeout(CLOSE_BOUND):
            for link, store in made:
                await store.close()
                await link.close()
    except TimeoutError:
        stacks = io.StringIO()
        for task in asyncio.all_tasks():
            task.print_stack(file=stacks)
        pytest.fail(f"closing the stores took over {CLOSE_BOUND:g} s; the tasks then:\n{stacks.getvalue()}")


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


def event(seq: int) -> StoredEvent:
    return StoredEvent(seq, b"id: s:%d\nevent: token\ndata: {}\n\n" % seq)


async def write(store: RedisStreamStore, stream_id: str, count: int, *, finish: bool = True) -> None:
    assert await store.create(stream_id)
    for seq in range(1, count + 1):
        await store.append(stream_id, event(seq))
    if finish:
        await store.finish(stream_id)


async def read_all(store: RedisStreamStore, stream_id: str, after: int = 0) -> list[int]:
    """Sequence numbers read after `after` until the end, waiting as a reader would."""
    seen: list[int] = []
    while True:
        batch = await store.read_after(stream_id, after, 50)
        assert batch is not None
        seen.extend(e.seq for e in batch.events)
        if batch.events:
            after = batch.events[-1].seq
        if batch.finished:
            return seen
        if not batch.events:
            await store.wait(stream_id, after)


async def test_another_instance_reads_every_event_in_order_then_the_end(make_store: Callable[..., Any]) -> None:
    producer, elsewhere = await make_store(), await make_store()
    reading = asyncio.create_task(read_all(elsewhere, "one"))
    await write(producer, "one", 30)
    assert await asyncio.wait_for(reading, 10) == list(range(1, 31))


async def until_in_redis(redis_client: aioredis.Redis, stream_id: str, entries: int) -> None:
    """Return once Redis holds entry number `entries` of the stream (the producer flushes in the background).

    XREAD blocks until an entry after the one before it exists, or answers at once if it does.
    """
    found = await redis_client.xread({KEYS.events(stream_id): f"0-{entries - 1}"}, count=1, block=10_000)
    assert found, f"entry {entries} of {stream_id} never reached Redis"


async def test_a_resume_point_is_an_exclusive_range_start(
    make_store: Callable[..., Any], redis_client: aioredis.Redis
) -> None:
    producer, elsewhere = await make_store(), await make_store()
    await write(producer, "resume", 10)
    # Every event stored before the read: its first XRANGE answers it, where a read that found
    # fewer would wait, and the wait would bring the rest without the range being asked.
    await until_in_redis(redis_client, "resume", 10 + 1)
    assert await asyncio.wait_for(read_all(elsewhere, "resume", after=7), 10) == [8, 9, 10]


async def test_a_replayed_write_is_rejected_so_events_are_never_duplicated(
    make_store: Callable[..., Any], redis_client: aioredis.Redis
) -> None:
    producer = await make_store()
    await write(producer, "replay", 5)
    await asyncio.wait_for(read_all(await make_store(), "replay"), 10)
    # A batch sent again (its first answer was lost, say): Redis refuses each entry as a replay.
    producer._writer._outboxes["replay"].pending = [event(2), event(3)]
    producer._writer._mark("replay")
    with capture_logs() as logs:
        await producer._writer._flush_once()
    assert logs == []
    entries: Any = await redis_client.xrange(KEYS.events("replay"))
    assert [entry_id for entry_id, _ in entries] == [f"0-{n}".encode() for n in range(1, 7)]  # 5 events and the end


async def test_the_redis_stream_is_capped_and_a_resume_before_it_is_dropped(
    make_store: Callable[..., Any], redis_client: aioredis.Redis
) -> None:
    producer, elsewhere = await make_store(max_buffered_events=5), await make_store(max_buffered_events=5)
    await write(producer, "capped", 20)
    await asyncio.wait_for(read_all(elsewhere, "capped", after=15), 10)
    assert await redis_client.xlen(KEYS.events("capped")) == 5 + 1  # the last five events and the end
    with pytest.raises(EventsDroppedError):
        await elsewhere.read_after("capped", 3, 50)


async def test_a_running_stream_expires_after_retention_plus_a_lease_and_an_ended_one_after_retention(
    make_store: Callable[..., Any], redis_client: aioredis.Redis
) -> None:
    producer, elsewhere = await make_store(retention_seconds=60), await make_store(retention_seconds=60)
    await write(producer, "ttl", 3, finish=False)
    await asyncio.wait_for(_until_seq(elsewhere, "ttl", 3), 10)
    running = await redis_client.ttl(KEYS.events("ttl"))
    assert 60 < running <= 61
    await producer.finish("ttl")
    await asyncio.wait_for(read_all(elsewhere, "ttl", after=3), 10)
    assert 0 < await redis_client.ttl(KEYS.events("ttl")) <= 60
    assert not await redis_client.exists(KEYS.lease("ttl"))


async def _until_seq(store: RedisStreamStore, stream_id: str, seq: int) -> None:
    after = 0
    while after < seq:
        batch = await store.read_after(stream_id, after, 50)
        assert batch is not None
        if batch.events:
            after = batch.events[-1].seq
        else:
            await store.wait(stream_id, after)


async def test_a_reader_elsewhere_gets_the_events_that_woke_it_without_another_round_trip(
    make_store: Callable[..., Any], redis_client: aioredis.Redis
) -> None:
    producer, elsewhere = await make_store(), await make_store()
    assert await producer.create("handed")
    # Range reads of any client: the producer makes none, so these are the reader's.
    ranges_before = await _calls(redis_client, "xrange")
    for seq in range(1, 6):
        waiting = asyncio.create_task(elsewhere.wait("handed", seq - 1))
        await producer.append("handed", event(seq))
        await asyncio.wait_for(waiting, 10)
        # Served in one step, never suspended on a round trip (a range read, or the report to the
        # producer that a reader is here, due at once on the first read).
        reading = elsewhere.read_after("handed", seq - 1, 50)
        with pytest.raises(StopIteration) as served:
            reading.send(None)
        batch = served.value.value
        assert batch is not None
        assert [e.seq for e in batch.events] == [seq]
    assert await _calls(redis_client, "xrange") == ranges_before


async def _calls(client: aioredis.Redis, command: str) -> int:
    """How many times the server ran `command` since it started."""
    stats: dict[str, Any] = await client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_a_reader_elsewhere_is_reported_to_the_producer_with_how_far_it_has_read(
    make_store: Callable[..., Any],
) -> None:
    producer, elsewhere = await make_store(), await make_store()
    reports: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
    producer.on_read_elsewhere(lambda stream_id, seq: reports.put_nowait((stream_id, seq)))
    await write(producer, "reported", 3, finish=False)
    await asyncio.wait_for(_until_seq(elsewhere, "reported", 3), 10)
    # A reader asks for the events after 3: that it is here is reported, not how far (3 may be a
    # resuming client's claim); the registry says how far once the reader was sent them.
    await elsewhere.read_after("reported", 3, 50)

    async def reported_at(seq: int) -> None:
        while await reports.get() != ("reported", seq):
            pass

    await asyncio.wait_for(reported_at(0), 10)
    assert producer.read_elsewhere("reported")
    elsewhere.reader_sent("reported", 3)
    await asyncio.wait_for(reported_at(3), 10)


async def test_a_look_at_a_stream_elsewhere_is_not_reported_to_its_producer_as_a_reader(
    make_store: Callable[..., Any], redis_client: aioredis.Redis
) -> None:
    producer, elsewhere = await make_store(), await make_store()
    reports: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
    producer.on_read_elsewhere(lambda stream_id, seq: reports.put_nowait((stream_id, seq)))
    await write(producer, "looked", 3, finish=False)
    await write(producer, "read", 3, finish=False)
    await until_in_redis(redis_client, "looked", 3)

    looked = await elsewhere.peek("looked", 0)  # what a HEAD asks
    await elsewhere.read_after("read", 0, 50)  # a reader: reported with the look, or after it

    async def reported(stream_id: str) -> None:
        while (await reports.get())[0] != stream_id:
            pass

    await asyncio.wait_for(reported("read"), 10)
    assert looked is not None
    assert [e.seq for e in looked.events] == [1]
    assert not await redis_client.exists(KEYS.read("looked"))
    assert not producer.read_elsewhere("looked")


async def test_a_reader_elsewhere_costs_one_blocking_read_per_event_it_waits_for(
    make_store: Callable[..., Any], redis_client: aioredis.Redis
) -> None:
    producer, elsewhere = await make_store(), await make_store(connections=1)
    assert await producer.create("paced")
    # Blocking reads of any client: the producer waits on nothing, so these are the reader's.
    xreads = await _calls(redis_client, "xread")
    for seq in range(1, 21):
        waiting = asyncio.create_task(elsewhere.wait("paced", seq - 1))
        await producer.append("paced", event(seq))
        await asyncio.wait_for(waiting, 10)
        batch = await elsewhere.read_after("paced", seq - 1, 50)
        assert batch is not None
        assert [e.seq for e in batch.events] == [seq]
    # One per event, and the one blocked now (twice as many read each event twice).
    assert await _calls(redis_client, "xread") - xreads <= 20 + 1


async def test_a_reader_waiting_on_a_stream_the_blocked_read_does_not_cover_is_woken_by_its_next_event(
    make_store: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A reader left to the block's timeout waits a minute (and a wait gives up after half a lease).
    monkeypatch.setattr(redis_follow, "BLOCK_MS", 60_000)
    producer, elsewhere = await make_store(lease=120), await make_store(connections=1, lease=120)
    for stream_id in ("covered", "new"):
        assert await producer.create(stream_id)
        await producer.append(stream_id, event(1))
    waiting_covered = asyncio.create_task(elsewhere.wait("covered", 1))
    # A round trip: meanwhile that wait starts the one connection's XREAD, on "covered" alone.
    assert await elsewhere.read_after("new", 0, 50) is not None
    waiting_new = asyncio.create_task(elsewhere.wait("new", 1))
    await producer.append("new", event(2))
    await asyncio.wait_for(waiting_new, 10)
    waiting_covered.cancel()


async def test_a_wait_given_up_before_any_event_leaves_the_other_readers_of_its_connection_served(
    make_store: Callable[..., Any],
) -> None:
    # A long lease: a wait here ends by its event, never by giving up (half a lease).
    producer, elsewhere = await make_store(lease=120), await make_store(connections=1, lease=120)
    for stream_id in ("quiet", "other"):
        assert await producer.create(stream_id)
    with capture_logs() as logs:
        gave_up = asyncio.create_task(elsewhere.wait("quiet", 0))
        await asyncio.sleep(0)  # one step: the wait is registered (and the XREAD is to cover it)
        gave_up.cancel()  # the reader left: "quiet" has no reader and nothing kept
        waiting = asyncio.create_task(elsewhere.wait("other", 0))
        await producer.append("other", event(1))
        await asyncio.wait_for(waiting, 10)
    # Served by an XREAD that was never refused (kept in it, "quiet" would have no entry to read after).
    assert [entry for entry in logs if entry["event"] == "redis_follow_failed"] == []


async def test_events_appended_back_to_back_reach_redis_in_a_few_flushes_not_one_trip_each(
    make_store: Callable[..., Any], redis_client: aioredis.Redis
) -> None:
    producer = await make_store()
    # Flushes of any client: the flush script is the only one run here.
    before = await _calls(redis_client, "evalsha") + await _calls(redis_client, "eval")
    await write(producer, "batched", 500)
    await asyncio.wait_for(read_all(await make_store(), "batched"), 10)
    # A few flushes, and the first one's refusal by a Redis that had not seen the script yet.
    assert await _calls(redis_client, "evalsha") + await _calls(redis_client, "eval") - before <= 3 + 1


async def test_a_running_streams_expiry_is_set_by_its_first_flush_not_by_every_flush(
    make_store: Callable[..., Any], redis_client: aioredis.Redis
) -> None:
    # A long lease: no renewal (which refreshes the owner record) falls inside the test.
    producer, elsewhere = await make_store(lease=120), await make_store(lease=120)
    assert await producer.create("refreshed")
    before = await _calls(redis_client, "expire")
    for seq in range(1, 21):
        await producer.append("refreshed", event(seq))
        await asyncio.wait_for(_until_seq(elsewhere, "refreshed", seq), 10)  # one flush per event
    # Two for the first flush (events and owner); a refresh a second later, were the machine that slow.
    assert await _calls(redis_client, "expire") - before <= 4  # 40 if every flush set them
    assert await redis_client.ttl(KEYS.events("refreshed")) > 0


async def test_a_running_streams_later_events_refresh_its_expiry(
    make_store: Callable[..., Any], redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_write, "REFRESH", 0.0)  # due at every flush, with no clock to wait on
    producer, elsewhere = await make_store(lease=120), await make_store(lease=120)
    await write(producer, "refreshed", 1, finish=False)
    await asyncio.wait_for(_until_seq(elsewhere, "refreshed", 1), 10)
    await redis_client.persist(KEYS.events("refreshed"))
    await producer.append("refreshed", event(2))
    await asyncio.wait_for(_until_seq(elsewhere, "refreshed", 2), 10)
    assert await redis_client.ttl(KEYS.events("refreshed")) > 0


async def test_events_still_pending_when_the_producer_closes_reach_redis_with_the_end(
    make_store: Callable[..., Any],
) -> None:
    producer, elsewhere = await make_store(), await make_store()
    assert await producer.create("last-words")
    # Nothing below yields to the flusher before close(): only the final flush can send these.
    for seq in range(1, 6):
        await producer.append("last-words", event(seq))
    await producer.finish("last-words")
    await producer.close()
    assert await asyncio.wait_for(read_all(elsewhere, "last-words"), 10) == [1, 2, 3, 4, 5]


# The byte budget bounds the producer's own streams, kept in its memory too ("event(n)" is 31 bytes)


async def test_the_producers_stream_past_the_byte_budget_has_no_room_until_a_reader_had_its_events(
    make_store: Callable[..., Any],
) -> None:
    producer = await make_store(max_kept_bytes=100)
    await write(producer, "held", 4, finish=False)  # 124 bytes, none read
    assert not producer.has_room("held")
    waiting = asyncio.create_task(producer.wait_for_room("held"))
    await asyncio.sleep(0)  # let it wait: only then does the read have to wake it
    assert not waiting.done()

    producer.mark_read("held", 2)  # as the registry does for a reader here or elsewhere
    await asyncio.wait_for(waiting, 5)
    assert producer.has_room("held")
    assert producer.kept_bytes == 93  # only as many read events go as make room: the first
    assert not await producer.create("another")  # it reserves room for its next read against the budget


async def test_a_stream_dropped_locally_for_the_byte_budget_as_it_finishes_still_ends_in_redis(
    make_store: Callable[..., Any], redis_client: aioredis.Redis
) -> None:
    producer, elsewhere = await make_store(max_kept_bytes=100), await make_store()
    await write(producer, "shed", 4, finish=False)
    await until_in_redis(redis_client, "shed", 4)  # nothing is pending but the end
    await producer.finish("shed")  # past the budget with nothing read: its local copy goes at once

    assert "shed" not in producer._local
    # Its events and its end still reach Redis: a reader elsewhere is not told the generation was lost.
    assert await asyncio.wait_for(read_all(elsewhere, "shed"), 10) == [1, 2, 3, 4]


async def test_appending_never_waits_on_redis_and_a_local_reader_gets_everything_while_it_is_down(
    make_store: Callable[..., Any], redis_server: RedisServer
) -> None:
    producer = await make_store()
    assert await producer.create("local")
    redis_server.kill()
    for seq in range(1, 101):
        await producer.append("local", event(seq))
    await producer.finish("local")
    assert await asyncio.wait_for(read_all(producer, "local"), 10) == list(range(1, 101))


async def test_a_stream_written_while_redis_was_down_is_restored_there_when_it_returns(
    make_store: Callable[..., Any], redis_server: RedisServer
) -> None:
    producer, elsewhere = await make_store(), await make_store()
    await write(producer, "restored", 10, finish=False)
    await asyncio.wait_for(_until_seq(elsewhere, "restored", 10), 10)
    redis_server.kill()
    for seq in range(11, 21):
        await producer.append("restored", event(seq))
    await producer.finish("restored")
    with pytest.raises(StoreUnavailableError):
        await elsewhere.read_after("restored", 10, 50)
    redis_server.start()  # empty: the restart lost everything
    assert await elsewhere.recovered()
    assert await asyncio.wait_for(read_all(elsewhere, "restored", after=10), 10) == list(range(11, 21))
    assert await asyncio.wait_for(read_all(elsewhere, "restored"), 10) == list(range(1, 21))


async def test_while_redis_is_down_the_producer_holds_no_more_than_its_local_buffer_and_restores_that(
    make_store: Callable[..., Any], redis_server: RedisServer
) -> None:
    # Each event waited for Redis in a list of its own as well, past the local buffer's bound:
    # memory grew with every token of every running stream for as long as Redis was away.
    producer, elsewhere = await make_store(max_buffered_events=10), await make_store(max_buffered_events=10)
    await write(producer, "outage", 1, finish=False)
    redis_server.kill()
    await producer.append("outage", event(2))
    await asyncio.wait_for(producer._link._down.wait(), 10)  # the flush of event 2 failed
    for seq in range(3, 1001):
        await producer.append("outage", event(seq))
    waiting = producer._writer._outboxes["outage"].pending
    assert len(waiting) <= 10
    await producer.finish("outage")
    redis_server.start()  # empty: the rewrite brings the last ten back
    assert await elsewhere.recovered()
    assert await asyncio.wait_for(read_all(elsewhere, "outage", after=990), 10) == list(range(991, 1001))


async def test_a_restart_noticed_by_the_lease_renewer_alone_still_gets_the_stream_rewritten(
    make_store: Callable[..., Any], redis_server: RedisServer
) -> None:
    producer, elsewhere = await make_store(), await make_store()
    await write(producer, "renewed", 10, finish=False)
    await asyncio.wait_for(_until_seq(elsewhere, "renewed", 10), 10)
    redis_server.kill()
    # No event is written while Redis is away: only the renewer (every third of a lease) finds out.
    await asyncio.wait_for(producer._link._down.wait(), 10)
    redis_server.start()
    assert await producer.recovered()
    for seq in range(11, 16):
        await producer.append("renewed", event(seq))
    await producer.finish("renewed")
    assert await elsewhere.recovered()
    assert await asyncio.wait_for(read_all(elsewhere, "renewed"), 10) == list(range(1, 16))


async def test_new_streams_are_refused_while_redis_is_down(
    make_store: Callable[..., Any], redis_server: RedisServer
) -> None:
    producer = await make_store()
    redis_server.kill()
    with pytest.raises(StoreUnavailableError):
        await producer.create("refused")
    assert "refused" not in producer._local


async def test_a_reader_elsewhere_learns_the_generation_is_lost_once_the_lease_lapses(
    make_store: Callable[..., Any], redis_client: aioredis.Redis
) -> None:
    producer, elsewhere = await make_store(), await make_store()
    await write(producer, "lost", 3, finish=False)
    await asyncio.wait_for(_until_seq(elsewhere, "lost", 3), 10)
    await producer._writer.close()  # the producer stops renewing, as a killed process would
    with pytest.raises(GenerationLostError):
        await asyncio.wait_for(wait_forever(elsewhere, "lost", 3), 10)


async def wait_forever(store: RedisStreamStore, stream_id: str, seq: int) -> None:
    while True:
        await store.wait(stream_id, seq)


async def test_a_stop_published_by_another_instance_reaches_the_producer(make_store: Callable[..., Any]) -> None:
    producer, elsewhere = await make_store(), await make_store()
    asked: asyncio.Queue[str] = asyncio.Queue()
    producer.on_stop_request(asked.put_nowait)
    await asyncio.wait_for(producer.listening.wait(), 10)
    await write(producer, "stop-me", 2, finish=False)
    await asyncio.wait_for(_until_seq(elsewhere, "stop-me", 2), 10)
    stopping = asyncio.create_task(elsewhere.stop_elsewhere("stop-me"))
    assert await asyncio.wait_for(asked.get(), 10) == "stop-me"
    assert not stopping.done()  # it waits for the stream's end
    await producer.finish("stop-me")
    await asyncio.wait_for(stopping, 10)
