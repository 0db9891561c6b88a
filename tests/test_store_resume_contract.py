"""What a resume point at or past the newest event reads as, the same from every store and instance.

Each test runs against the memory store, the Redis store on the instance producing the stream
(its local copy), and the Redis store of another instance (Redis only, on a real redis-server).
A finished stream has nothing after its final event, however far past it the point is: the
reader answers 204. A live stream's newest event is not its end: the reader waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from server.shared.link import RedisLink
from server.streams.memory import MemoryStreamStore
from server.streams.redis_keys import StreamKeys
from server.streams.redis_store import RedisStreamStore
from server.streams.store import Slice, StoredEvent, StreamStore
from tests.conftest import make_settings

KEYS = StreamKeys("sluice")
LAST = 3  # the stream's final event
BOUND = 10.0  # seconds: far beyond a lease (1 s here) and far below retention (300 s)
READS = 100  # a reader needs a few: one per wait the append or the end wakes, or per half a lease


@dataclass
class Stores:
    """The store the generation writes to, the one a resuming reader reads, and when Redis has an entry."""

    producer: StreamStore
    reader: StreamStore
    stored: Callable[[str, int], Awaitable[None]]


async def _nothing(stream_id: str, entry: int) -> None:
    return None  # one store: what is appended is there


@pytest.fixture(params=["memory", "redis-producer", "redis-elsewhere"])
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[Stores]:
    if request.param == "memory":
        memory = MemoryStreamStore(max_events=100, max_streams=10, retention=300)
        yield Stores(memory, memory, _nothing)
        await memory.close()
        return
    url = request.getfixturevalue("redis_server").url
    links = [RedisLink(make_settings(redis={"url": url, "lease_seconds": 1.0}).redis) for _ in range(2)]
    made = []
    for link in links:
        link.start()
        store = RedisStreamStore(link, make_settings().browser)
        store.start()
        made.append(store)
    client = aioredis.Redis.from_url(url)

    async def stored(stream_id: str, entry: int) -> None:
        """Return once Redis holds entry `entry` (the producer flushes in the background)."""
        found = await client.xread({KEYS.events(stream_id): f"0-{entry - 1}"}, count=1, block=int(BOUND * 1000))
        assert found, f"entry {entry} of {stream_id} never reached Redis"

    producer = made[0]
    yield Stores(producer, producer if request.param == "redis-producer" else made[1], stored)
    await client.aclose()
    for store, link in zip(made, links, strict=True):
        await store.close()
        await link.close()


async def write(stores: Stores, stream_id: str, *, finish: bool) -> None:
    """Events 1 to LAST, then the end if `finish`; return once the reader's store can see them."""
    assert await stores.producer.create(stream_id)
    for seq in range(1, LAST + 1):
        await stores.producer.append(stream_id, StoredEvent(seq, b"data: %d\n\n" % seq))
    if finish:
        await stores.producer.finish(stream_id)
    await stores.stored(stream_id, LAST + 1 if finish else LAST)  # the end is an entry of its own


def the_end(batch: Slice | None) -> bool:
    """What makes the reader answer 204: a finished stream with nothing left to send."""
    assert batch is not None
    return batch.finished and not batch.events


@pytest.mark.parametrize("after", [LAST, LAST + 1, LAST + 1000], ids=["final", "one-past", "far-past"])
async def test_a_resume_at_or_past_the_final_event_of_a_finished_stream_reads_as_its_end(
    stores: Stores, after: int
) -> None:
    await write(stores, "done", finish=True)
    assert the_end(await stores.reader.read_after("done", after, 256))
    assert the_end(await stores.reader.peek("done", after))  # HEAD answers as GET does
    await asyncio.wait_for(stores.reader.wait("done", after), BOUND)  # and a waiter is not kept


@pytest.mark.parametrize("after", [LAST, LAST + 1000], ids=["newest", "far-past"])
async def test_a_resume_at_or_past_the_newest_event_of_a_live_stream_waits_for_more(stores: Stores, after: int) -> None:
    await write(stores, "live", finish=False)
    batch = await stores.reader.read_after("live", after, 256)
    assert batch is not None
    assert (batch.events, batch.finished) == ((), False)


async def test_a_reader_waiting_past_the_newest_event_learns_the_end_once_the_stream_finishes(stores: Stores) -> None:
    await write(stores, "ends", finish=False)
    after = LAST + 1000

    async def until_the_end() -> None:
        # Bounded in reads too: a wait that returns at once, with the end never read, would spin.
        for _ in range(READS):
            if the_end(await stores.reader.read_after("ends", after, 256)):
                return
            await stores.reader.wait("ends", after)
        raise AssertionError(f"no end after {READS} reads")

    waiting = asyncio.create_task(until_the_end())
    await stores.producer.append("ends", StoredEvent(LAST + 1, b"data: last\n\n"))
    await stores.producer.finish("ends")
    await asyncio.wait_for(waiting, BOUND)
