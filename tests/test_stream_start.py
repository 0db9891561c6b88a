"""When a stream's response starts: after its routing, or beside it once an upstream accepted and its token is late.

ResponseStart alone, with a guard on the test's own task; the response it would start is a
stand-in whose `make` is noted (the early start calls it as it begins).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from aiohttp.test_utils import make_mocked_request

from server.access import RequestRecord
from server.guard import Deadlines, StreamGuard
from server.sse import SSEResponse
from server.stream_start import ResponseStart
from server.timers import Timers

BOUND = 10.0  # seconds any wait may take before the test fails
HEARTBEAT = 60.0  # the routing's own limit: far away


@pytest.fixture
def timers() -> Iterator[Timers]:
    timers = Timers()
    yield timers
    timers.close()


def response_start(timers: Timers, made: asyncio.Future[None]) -> tuple[ResponseStart, StreamGuard]:
    far = BOUND * 6
    guard = StreamGuard(Deadlines(first_token=far, idle=far, total=far, send=far), timers=timers)

    def make() -> SSEResponse:
        if not made.done():
            made.set_result(None)
        return SSEResponse(heartbeat_interval=HEARTBEAT, send_timeout=BOUND, timers=timers)

    request = make_mocked_request("POST", "/chat/stream")
    return ResponseStart(request, RequestRecord(started=0.0), guard, make, HEARTBEAT), guard


async def test_a_first_token_a_few_loop_turns_after_the_acceptance_starts_no_response_beside_the_routing(
    timers: Timers,
) -> None:
    made: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    start, guard = response_start(timers, made)
    start.soon()  # the upstream answered 200
    for _ in range(5):  # its first token comes a few reads later
        await asyncio.sleep(0)
    start.routed()
    assert not start.begun
    assert not made.done()
    start.close()
    guard.close()


async def test_a_first_token_later_than_the_grace_after_the_acceptance_starts_the_response_beside_the_routing(
    timers: Timers,
) -> None:
    made: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    start, guard = response_start(timers, made)
    start.soon()
    await asyncio.wait_for(made, BOUND)  # the routing's own limit is a minute away: the acceptance started it
    assert start.begun
    start.close()
    guard.close()
