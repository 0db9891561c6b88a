"""MemoryStreamStore alone (ordered events, reads after an id, waiting, bounds, expiry), and the sink before it."""

from __future__ import annotations

import asyncio

import pytest

from server.chunks import parse_chunk
from server.dialects import NativeDialect
from server.streams.generation import StoreSink
from server.streams.memory import MemoryStreamStore
from server.streams.store import EventsDroppedError, StoredEvent


def make_store(
    *,
    max_events: int = 100,
    max_streams: int = 10,
    retention: float = 60,
    max_kept_bytes: int | None = None,
    reserve: int = 0,
) -> MemoryStreamStore:
    """A store whose budget counts events alone unless `reserve` says what a live stream reserves."""
    return MemoryStreamStore(
        max_events=max_events,
        max_streams=max_streams,
        retention=retention,
        max_kept_bytes=max_kept_bytes,
        reserve=reserve,
    )


async def fill(
    store: MemoryStreamStore, stream_id: str, count: int, *, finish: bool = True, owner: str = ""
) -> list[StoredEvent]:
    assert await store.create(stream_id, owner)
    events = [StoredEvent(seq, f"event {seq}".encode()) for seq in range(1, count + 1)]
    for event in events:
        await store.append(stream_id, event)
    if finish:
        await store.finish(stream_id)
    return events


async def test_reading_after_each_sequence_number_gives_exactly_the_rest() -> None:
    store = make_store()
    events = await fill(store, "s", 5)
    for seq in range(6):
        batch = await store.read_after("s", seq, limit=100)
        assert batch is not None
        assert batch.events == tuple(events[seq:])
        assert batch.finished


async def test_a_read_stops_at_its_limit_and_is_not_the_end() -> None:
    store = make_store()
    events = await fill(store, "s", 5)
    batch = await store.read_after("s", 1, limit=2)
    assert batch is not None
    assert batch.events == tuple(events[1:3])
    assert not batch.finished


async def test_a_live_stream_is_not_finished_even_when_read_to_its_last_event() -> None:
    store = make_store()
    await fill(store, "s", 3, finish=False)
    batch = await store.read_after("s", 0, limit=100)
    assert batch is not None
    assert len(batch.events) == 3
    assert not batch.finished


async def test_an_unknown_stream_reads_as_none() -> None:
    assert await make_store().read_after("nobody", 0, limit=10) is None


async def test_events_must_follow_each_other() -> None:
    store = make_store()
    await fill(store, "s", 2, finish=False)
    with pytest.raises(ValueError, match="does not follow"):
        await store.append("s", StoredEvent(4, b"skipped one"))


async def test_nothing_is_appended_after_the_end() -> None:
    store = make_store()
    await fill(store, "s", 2)
    with pytest.raises(ValueError, match="finished"):
        await store.append("s", StoredEvent(3, b"late"))


async def test_a_full_buffer_drops_its_oldest_events_and_says_so_on_a_read_before_them() -> None:
    store = make_store(max_events=3)
    events = await fill(store, "s", 5)
    batch = await store.read_after("s", 2, limit=100)
    assert batch is not None
    assert batch.events == tuple(events[2:])
    with pytest.raises(EventsDroppedError):
        await store.read_after("s", 1, limit=100)


async def test_wait_returns_when_the_next_event_arrives() -> None:
    store = make_store()
    await fill(store, "s", 1, finish=False)
    waiter = asyncio.create_task(store.wait("s", 1))
    await asyncio.sleep(0)  # let the waiter block: only then does the append have to wake it
    assert not waiter.done()
    await store.append("s", StoredEvent(2, b"next"))
    await asyncio.wait_for(waiter, 5)


async def test_wait_returns_at_once_when_events_are_already_there_or_the_stream_ended() -> None:
    store = make_store()
    await fill(store, "live", 2, finish=False)
    await fill(store, "ended", 1)
    await asyncio.wait_for(store.wait("live", 1), 5)
    await asyncio.wait_for(store.wait("ended", 1), 5)
    await asyncio.wait_for(store.wait("unknown", 0), 5)


async def test_wait_returns_when_the_stream_finishes() -> None:
    store = make_store()
    await fill(store, "s", 1, finish=False)
    waiter = asyncio.create_task(store.wait("s", 1))
    await asyncio.sleep(0)
    await store.finish("s")
    await asyncio.wait_for(waiter, 5)


async def test_a_finished_stream_expires_after_the_retention_time() -> None:
    store = make_store(retention=0.05)
    await fill(store, "s", 2)
    assert await store.read_after("s", 0, limit=10) is not None
    # Not a synchronisation sleep: the expiry timer was scheduled before this one and ends
    # sooner, so the loop has run it by the time this returns.
    await asyncio.sleep(0.1)
    assert await store.read_after("s", 0, limit=10) is None
    assert len(store) == 0


async def test_only_finished_streams_expire() -> None:
    store = make_store(retention=0.01)
    await fill(store, "live", 2, finish=False)
    await fill(store, "finished", 2)
    await asyncio.sleep(0.05)  # past the finished stream's expiry timer, as above
    assert await store.read_after("finished", 0, limit=10) is None
    assert await store.read_after("live", 0, limit=10) is not None


async def test_when_full_of_live_streams_a_new_one_is_refused() -> None:
    store = make_store(max_streams=2)
    await fill(store, "a", 1, finish=False)
    await fill(store, "b", 1, finish=False)
    assert not await store.create("c")


async def test_when_full_the_oldest_finished_stream_makes_room() -> None:
    store = make_store(max_streams=3)
    await fill(store, "first-finished", 1)
    await fill(store, "live", 1, finish=False)
    await fill(store, "second-finished", 1)
    assert await store.create("new")
    assert await store.read_after("first-finished", 0, limit=10) is None
    assert await store.read_after("second-finished", 0, limit=10) is not None
    assert await store.read_after("live", 0, limit=10) is not None


async def test_past_the_byte_budget_the_streams_that_finished_longest_ago_are_dropped() -> None:
    store = make_store(max_kept_bytes=150)  # "event N": 7 or 8 bytes; ten of them about 70
    await fill(store, "first", 10)
    await fill(store, "second", 10)
    await fill(store, "third", 10)

    assert await store.read_after("first", 0, limit=100) is None
    assert [len(store.held(name)) for name in ("second", "third")] == [10, 10]


async def test_live_streams_are_not_dropped_for_the_byte_budget_and_hold_new_ones_off() -> None:
    store = make_store(max_kept_bytes=100)
    await fill(store, "live", 10, finish=False)
    await fill(store, "also live", 10, finish=False)

    assert [len(store.held(name)) for name in ("live", "also live")] == [10, 10]
    assert not await store.create("one more")
    await store.finish("live")  # finished, it is the first to go when room is needed
    assert await store.create("one more")
    assert store.held("live") == []


# The byte budget shared between keys ("event N" is 7 or 8 bytes: ten of them 71)


async def test_a_key_over_its_share_of_the_byte_budget_is_refused_while_another_key_gets_its_stream() -> None:
    store = make_store(max_kept_bytes=100)
    await fill(store, "a1", 10, finish=False, owner="a")
    await fill(store, "a2", 10, finish=False, owner="a")  # a's live streams alone hold the budget

    assert await store.create("b1", "b")
    assert not await store.create("a3", "a")


async def test_past_the_byte_budget_the_key_over_its_share_loses_its_finished_streams_first() -> None:
    store = make_store(max_kept_bytes=150)
    await fill(store, "b-old", 10, owner="b")  # finished longest ago, but b holds under its share
    await fill(store, "a-first", 10, owner="a")
    await fill(store, "a-second", 10, owner="a")

    assert await store.read_after("a-first", 0, limit=100) is None
    assert [len(store.held(name)) for name in ("b-old", "a-second")] == [10, 10]


async def test_a_key_within_its_share_keeps_its_finished_stream_when_live_streams_of_another_fill_the_budget() -> None:
    store = make_store(max_kept_bytes=150)
    await fill(store, "b-old", 10, owner="b")
    await fill(store, "a1", 10, finish=False, owner="a")
    await fill(store, "a2", 10, finish=False, owner="a")  # 213 bytes kept, 142 of them a's

    assert [len(store.held(name)) for name in ("b-old", "a1", "a2")] == [10, 10, 10]


# Growth past the byte budget is held back (black-box review: streams started before their first
# token all passed the check at their start, then grew to 54.5 MB against a 2 MB budget)


async def grow(store: MemoryStreamStore, stream_id: str, count: int) -> None:
    """Append `count` more "event N" events to a live stream."""
    last = store.held(stream_id)[-1].seq if store.held(stream_id) else 0
    for seq in range(last + 1, last + count + 1):
        await store.append(stream_id, StoredEvent(seq, f"event {seq}".encode()))


async def test_a_live_stream_has_no_room_once_the_budget_is_held_and_keeps_what_nobody_read() -> None:
    store = make_store(max_kept_bytes=100)
    await fill(store, "s", 10, finish=False)  # 71 bytes
    had_room = store.has_room("s")
    await grow(store, "s", 5)  # 111

    assert (had_room, store.has_room("s")) == (True, False)
    assert len(store.held("s")) == 15  # nothing dropped: its generation waits instead
    assert store.has_room("unknown")


async def test_a_held_stream_lets_the_events_a_reader_had_go_oldest_first_until_it_has_room() -> None:
    store = make_store(max_kept_bytes=50)
    await fill(store, "s", 10, finish=False)  # 71 bytes, none read
    assert not store.has_room("s")
    store.mark_read("s", 4)

    assert store.has_room("s")  # 1..4 (28 bytes) let go: 43 kept
    assert [event.seq for event in store.held("s")] == list(range(5, 11))
    assert store.kept_bytes == 43
    with pytest.raises(EventsDroppedError):
        await store.read_after("s", 0, limit=10)
    store.mark_read("s", 10)
    assert [event.seq for event in store.held("s")] == list(range(5, 11))  # it has room: nothing more goes


async def test_a_held_stream_with_only_unread_events_has_no_room_however_far_a_reader_claims() -> None:
    store = make_store(max_kept_bytes=50)
    await fill(store, "s", 10, finish=False)
    store.mark_read("s", 2)

    assert not store.has_room("s")  # 1..2 gone, 57 bytes nobody had are kept
    assert [event.seq for event in store.held("s")] == list(range(3, 11))


async def test_a_stream_finishing_past_the_budget_lets_the_events_its_reader_had_go_before_being_dropped() -> None:
    store = make_store(max_kept_bytes=100)
    await fill(store, "s", 10, finish=False)
    store.mark_read("s", 5)
    await grow(store, "s", 5)  # 111 bytes: its last read took the store past its budget

    await store.finish("s")  # dropped whole, its reader would never get the last ten

    assert [event.seq for event in store.held("s")] == list(range(3, 16))  # 1 and 2 made room


async def test_a_held_stream_is_woken_when_its_reader_had_its_events() -> None:
    store = make_store(max_kept_bytes=50)
    await fill(store, "s", 10, finish=False)
    waiting = asyncio.create_task(store.wait_for_room("s"))
    await asyncio.sleep(0)  # let it wait: only then does the read have to wake it
    assert not waiting.done()

    store.mark_read("s", 6)
    await asyncio.wait_for(waiting, 5)
    assert store.has_room("s")


async def test_a_held_stream_is_woken_and_has_room_when_another_stream_is_let_go() -> None:
    store = make_store(max_kept_bytes=100, retention=0.01)
    await fill(store, "held", 10, finish=False)
    await fill(store, "other", 5, finish=False)  # 71 + 35 bytes: no room for either
    assert not store.has_room("held")
    waiting = asyncio.create_task(store.wait_for_room("held"))
    await asyncio.sleep(0)
    assert not waiting.done()

    await store.finish("other")  # expires after its retention: its bytes go
    await asyncio.wait_for(waiting, 5)
    assert store.has_room("held")


async def test_a_key_within_its_share_has_room_while_another_keys_live_streams_hold_the_budget() -> None:
    store = make_store(max_kept_bytes=100)
    await fill(store, "a1", 10, finish=False, owner="a")
    await fill(store, "a2", 10, finish=False, owner="a")  # 142 bytes: a alone holds the budget
    await fill(store, "b1", 5, finish=False, owner="b")  # 35, under b's share of 50

    assert [store.has_room(name) for name in ("a1", "a2", "b1")] == [False, False, True]
    await grow(store, "b1", 3)  # 56: b holds its share too
    assert not store.has_room("b1")


async def test_a_held_key_has_room_again_when_another_key_goes_and_its_share_grows() -> None:
    store = make_store(max_kept_bytes=100)
    await fill(store, "a", 9, finish=False, owner="a")  # 63: over its share of 50 with b there
    await fill(store, "b", 6, finish=False, owner="b")  # 42: 105 kept
    assert not store.has_room("a")
    waiting = asyncio.create_task(store.wait_for_room("a"))
    await asyncio.sleep(0)

    store.discard("b")  # b's stream stopped: a holds 63 of a budget it has to itself
    await asyncio.wait_for(waiting, 5)
    assert store.has_room("a")


async def test_a_stopped_wait_for_room_leaves_nothing_behind() -> None:
    store = make_store(max_kept_bytes=10)
    await fill(store, "s", 2, finish=False)
    waiting = asyncio.create_task(store.wait_for_room("s"))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    store.discard("s")  # wakes nobody, and fails on nothing


# A new stream counts for its reservation: a burst of starts before any token cannot all pass


async def test_a_burst_of_starts_is_admitted_up_to_the_budget_in_reservations() -> None:
    store = make_store(max_kept_bytes=1000, reserve=100, max_streams=100)
    admitted = [await store.create(f"s{n}", "a") for n in range(15)]

    assert admitted == [True] * 10 + [False] * 5  # no event yet: 100 reserved for each
    assert await store.create("b1", "b")  # another key still gets its share
    await store.finish("s0")  # finished, it reserves nothing: a claims 900 of its share of 500
    assert not await store.create("s15", "a")
    store.discard("b1")
    assert await store.create("s15", "a")  # alone again, a claims 900 of 1000


async def test_a_live_stream_claims_its_events_and_its_reservation() -> None:
    store = make_store(max_kept_bytes=250, reserve=100)
    await fill(store, "a", 10, finish=False)  # claims 71 + 100
    assert await store.create("b")  # against 171
    assert not await store.create("c")  # against 271: reservations alone (200) would have let it in


async def test_closing_the_store_wakes_waiters_and_forgets_every_stream() -> None:
    store = make_store()
    await fill(store, "s", 1, finish=False)
    waiter = asyncio.create_task(store.wait("s", 1))
    await asyncio.sleep(0)
    await store.close()
    await asyncio.wait_for(waiter, 5)
    assert await store.read_after("s", 0, limit=10) is None


# The relay's sink in front of the store


async def test_the_sink_stores_each_event_of_a_batched_write_under_its_own_number() -> None:
    store = make_store()
    assert await store.create("s")
    dialect = NativeDialect("s", retry_ms=1000)
    sink = StoreSink(store, "s", dialect)
    first = dialect.chunk(parse_chunk(b'{"choices":[{"index":0,"delta":{"content":"a\\n\\nb"}}]}'))
    second = dialect.done("stop", None)
    assert first is not None

    await sink.write(first + second)  # the relay joins chunks that arrived in one read

    batch = await store.read_after("s", 0, limit=10)
    assert batch is not None
    assert [(e.seq, e.data) for e in batch.events] == [(1, first), (2, second)]
