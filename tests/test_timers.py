"""Timers: many deadlines on one loop timer, and a live stream's two deadlines kept there.

The deadlines are short (tens of milliseconds) and waited for through futures their owners set,
bounded far from their times; no test measures how late one fired.
"""

from __future__ import annotations

import asyncio
import gc
import weakref

import aiohttp
from aiohttp.test_utils import TestClient

from server.keys import TIMERS
from server.timers import Timers

BOUND = 10.0  # seconds any wait may take before the test fails


class Owner:
    """Notes the order it fired in; the last one expected sets `done`."""

    def __init__(self, name: str, fired: list[str], done: asyncio.Future[None] | None = None) -> None:
        self.name = name
        self.fired = fired
        self.done = done

    def timer_fired(self) -> None:
        self.fired.append(self.name)
        if self.done is not None:
            self.done.set_result(None)


async def deadlines_mid_stream(timers: Timers, response: aiohttp.ClientResponse) -> int:
    """The deadlines pending once the stream's first line arrived; the rest is then read to its end."""
    assert response.status == 200
    await asyncio.wait_for(response.content.readline(), BOUND)
    live = len(timers)
    await asyncio.wait_for(response.read(), BOUND)
    return live


class Failing:
    def timer_fired(self) -> None:
        raise RuntimeError("an owner's bug")


async def test_deadlines_fire_in_time_order_each_once() -> None:
    timers = Timers()
    fired: list[str] = []
    done = asyncio.get_running_loop().create_future()
    timers.later(0.03, Owner("third", fired, done))
    timers.later(0.01, Owner("first", fired))
    timers.later(0.02, Owner("second", fired))
    await asyncio.wait_for(done, BOUND)
    assert fired == ["first", "second", "third"]
    assert len(timers) == 0


async def test_a_deadline_added_earlier_than_every_other_fires_without_waiting_for_them() -> None:
    """The loop timer is moved to the new earliest deadline (not left at the later one)."""
    timers = Timers()
    fired: list[str] = []
    done = asyncio.get_running_loop().create_future()
    timers.later(60, Owner("late", fired))
    timers.later(0.01, Owner("soon", fired, done))
    await asyncio.wait_for(done, BOUND)
    assert fired == ["soon"]
    timers.close()


async def test_a_cancelled_deadline_never_fires_and_lets_go_of_its_owner_at_once() -> None:
    timers = Timers()
    fired: list[str] = []
    done = asyncio.get_running_loop().create_future()
    cancelled = Owner("cancelled", fired)
    gone = weakref.ref(cancelled)
    entry = timers.later(0.01, cancelled)
    timers.later(0.02, Owner("kept", fired, done))
    timers.cancel(entry)
    del cancelled
    gc.collect()
    assert gone() is None
    await asyncio.wait_for(done, BOUND)
    assert fired == ["kept"]


async def test_an_owner_that_fails_does_not_stop_the_deadlines_due_with_or_after_it() -> None:
    timers = Timers()
    fired: list[str] = []
    done = asyncio.get_running_loop().create_future()
    now = timers.time()
    timers.at(now + 0.01, Failing())
    timers.at(now + 0.01, Owner("same time", fired))
    timers.at(now + 0.02, Owner("after", fired, done))
    await asyncio.wait_for(done, BOUND)
    assert fired == ["same time", "after"]


async def test_cancelled_deadlines_leave_the_heap_once_they_are_most_of_it() -> None:
    """Streams that end cancel their deadlines: those entries must not pile up until their times."""
    timers = Timers()
    fired: list[str] = []
    entries = [timers.later(60 + index, Owner(str(index), fired)) for index in range(100)]
    for entry in entries[:60]:
        timers.cancel(entry)
    assert len(timers) == 40
    assert len(timers._heap) <= 50
    timers.close()


async def test_a_live_streams_heartbeat_and_guard_are_deadlines_of_the_applications_timers(
    client: TestClient[aiohttp.web.Request, aiohttp.web.Application],
) -> None:
    """Two entries per live stream on the application's one loop timer (not a loop timer each)."""
    timers = client.app[TIMERS]
    body = {
        "model": "gpt-4o",
        "stream": True,
        "messages": [{"role": "user", "content": "hi\n#sim tokens=3 gap_ms=200"}],
    }
    async with client.post("/v1/chat/completions", json=body) as response:
        live = await deadlines_mid_stream(timers, response)
    assert live == 2


async def test_a_browser_streams_guard_and_its_readers_heartbeat_are_deadlines_of_the_applications_timers(
    client: TestClient[aiohttp.web.Request, aiohttp.web.Application],
) -> None:
    timers = client.app[TIMERS]
    started = await client.post("/chat/streams", json={"message": "hi\n#sim tokens=3 gap_ms=200"})
    assert started.status == 201
    stream_url = (await started.json())["url"]
    async with client.get(stream_url) as response:
        live = await deadlines_mid_stream(timers, response)
    assert live == 2  # the generation's guard and this reader's heartbeat


async def test_a_non_streaming_calls_guard_is_a_deadline_of_the_applications_timers(
    client: TestClient[aiohttp.web.Request, aiohttp.web.Application],
) -> None:
    timers = client.app[TIMERS]
    body = {"message": "hi\n#sim tokens=2 ttft_ms=400"}
    call = asyncio.ensure_future(client.post("/chat", json=body))
    deadline = asyncio.get_running_loop().time() + BOUND
    while not len(timers) and not call.done():  # the guard's entry appears once the call is admitted
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    live = len(timers)
    response = await asyncio.wait_for(call, BOUND)
    assert response.status == 200
    assert live == 1


async def test_a_deadline_that_passes_cancels_the_block_and_raises_timeout_error() -> None:
    timers = Timers()
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    try:
        async with asyncio.timeout(BOUND):  # the backstop, far from the deadline
            try:
                with timers.deadline(timers.time() + 0.02) as deadline:
                    await never
            except TimeoutError:
                pass
        assert deadline.expired
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    finally:
        timers.close()


async def test_a_cancellation_from_outside_passes_through_a_deadline_that_has_not_passed() -> None:
    timers = Timers()
    entered = asyncio.get_running_loop().create_future()

    async def guarded() -> None:
        with timers.deadline(timers.time() + BOUND):
            entered.set_result(None)
            await asyncio.get_running_loop().create_future()

    task = asyncio.ensure_future(guarded())
    await asyncio.wait_for(entered, BOUND)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=BOUND)
    assert task in done
    assert task.cancelled()
    assert len(timers) == 0  # the block's exit let go of its entry
    timers.close()


async def test_a_rescheduled_deadline_waits_for_its_new_time() -> None:
    timers = Timers()
    woke = asyncio.get_running_loop().create_future()
    late = Owner("later", [], woke)
    with timers.deadline(timers.time() + 0.02) as deadline:
        deadline.reschedule(timers.time() + BOUND)
        timers.later(0.1, late)  # past the first time: the block must still be running then
        await asyncio.wait_for(woke, BOUND)
    assert not deadline.expired
    timers.close()
