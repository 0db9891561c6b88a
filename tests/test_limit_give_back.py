"""A stream's give-back to Redis whose answer never came: sent again once Redis answers, and counted once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import cast

import pytest
import structlog
from structlog.testing import capture_logs
from structlog.typing import EventDict

from server.auth.gate import Lease
from server.auth.gateway_keys import GatewayKey
from server.auth.limits import KeyLimits
from server.shared.limit_store import RedisLimitStore
from server.shared.limits import LimitsUnavailableError, Take
from server.shared.link import RedisLink
from tests.conftest import make_settings

TWO_STREAMS = KeyLimits(max_streams=2)
EPOCH = 1_700_000_000_000_000  # of the key's hash in these fakes of Redis


class TakesInOneEpoch:
    """Redis whose takes all take, in EPOCH."""

    async def take(self, name: str, **_: int | str) -> Take:
        return Take(exceeded=None, requests_level=0.0, tokens_level=0.0, retry_after=0.0, streams=0, epoch=EPOCH)


class LostAnswer(TakesInOneEpoch):
    """A key's stream count kept as Redis's script keeps it (each give-back id applied once), whose
    first give-back raises LimitsUnavailableError: after it ran (`ran`: its reply was lost) or before."""

    def __init__(self, streams: int, *, ran: bool) -> None:
        self.streams = streams
        self.sent = 0
        self._ran = ran
        self._applied: set[str] = set()

    async def give_back(self, name: str, *, streams: int, give_back_id: str, **_: int) -> None:
        self.sent += 1
        lost = self.sent == 1
        if lost and not self._ran:
            raise LimitsUnavailableError("Redis is unreachable")
        if give_back_id not in self._applied:
            self._applied.add(give_back_id)
            self.streams -= streams
        if lost:
            raise LimitsUnavailableError("Redis is unreachable")


@pytest.fixture
async def store_over(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Callable[[LostAnswer], RedisLimitStore]]:
    """A RedisLimitStore counting in the given LostAnswer; its link is never used, and Redis counts as up."""
    link = RedisLink(make_settings(redis={"url": "redis://127.0.0.1:1/0"}).redis)
    store = RedisLimitStore(link, retry_after=1)

    def over(redis: LostAnswer) -> RedisLimitStore:
        monkeypatch.setattr(store, "_buckets", redis)
        return store

    yield over
    await store.close()
    await link.close()


async def settled(store: RedisLimitStore) -> None:
    """Wait until the store has given Redis back what it owed."""
    settling = store._settling
    assert settling is not None
    await asyncio.wait_for(settling, 5)  # unrelated bound: Redis counts as up, so it settles at once


async def test_a_give_back_redis_ran_before_its_answer_was_lost_is_sent_again_and_counted_once(
    store_over: Callable[[LostAnswer], RedisLimitStore],
) -> None:
    # Counted twice, the key had one stream counted for its two live ones: a third went past max_streams.
    redis = LostAnswer(streams=2, ran=True)
    store = store_over(redis)
    slot = await store.take("k", TWO_STREAMS, requests=1, tokens=0, streams=1)

    await store.give_back("k", TWO_STREAMS, tokens=0, streams=1, slot=slot)
    await settled(store)

    assert redis.sent == 2
    assert redis.streams == 1


async def test_a_give_back_that_never_reached_redis_is_given_back_once_it_answers(
    store_over: Callable[[LostAnswer], RedisLimitStore],
) -> None:
    redis = LostAnswer(streams=2, ran=False)
    store = store_over(redis)
    slot = await store.take("k", TWO_STREAMS, requests=1, tokens=0, streams=1)

    await store.give_back("k", TWO_STREAMS, tokens=0, streams=1, slot=slot)
    await settled(store)

    assert redis.streams == 1


class TakeInFlight:
    """Redis with a take on its way that never answers, and the undos it was sent."""

    def __init__(self) -> None:
        self.taking = asyncio.Event()
        self.undone: list[str] = []

    async def take(self, name: str, **_: int | str) -> None:
        self.taking.set()
        await asyncio.Event().wait()

    async def undo(self, name: str, *, take_id: str, **_: int) -> None:
        self.undone.append(take_id)


async def test_a_take_whose_request_left_while_it_was_on_its_way_is_undone(
    store_over: Callable[[LostAnswer], RedisLimitStore],
) -> None:
    # Redis may still run the take (it was sent): its slot would stay taken there for good.
    redis = TakeInFlight()
    store = store_over(cast(LostAnswer, redis))
    taking = asyncio.create_task(store.take("k", TWO_STREAMS, requests=1, tokens=0, streams=1))
    await redis.taking.wait()
    taking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await taking
    await settled(store)

    assert len(redis.undone) == 1


class RedisAwayAtTimes(TakesInOneEpoch):
    """Redis answering takes in turn as `answers` says (False: its reply is lost, and the take owes an
    undo), noting what it is given back: tokens, streams and the epoch of each."""

    def __init__(self, *answers: bool) -> None:
        self._answers = list(answers)
        self.given: list[tuple[int, int, int, int]] = []

    async def take(self, name: str, **_: int | str) -> Take:
        if not self._answers.pop(0):
            raise LimitsUnavailableError("Redis is unreachable")
        return await super().take(name)

    async def undo(self, name: str, **_: int | str) -> None:
        pass

    async def give_back(
        self, name: str, *, tokens: int, streams: int, streams_epoch: int, tokens_epoch: int, **_: int | str
    ) -> None:
        self.given.append((tokens, streams, tokens_epoch, streams_epoch))


LIMITED = KeyLimits(tpm=1000, max_streams=2)


async def test_tokens_counted_here_go_back_here_while_the_slot_goes_back_to_redis(
    store_over: Callable[[LostAnswer], RedisLimitStore],
) -> None:
    # The slot taken in Redis, then the reservation's reply lost: given back to Redis too, the tokens
    # were given twice there (its take's undo gives them back already).
    redis = RedisAwayAtTimes(True, False)
    store = store_over(cast(LostAnswer, redis))
    slot = await store.take("k", LIMITED, requests=1, tokens=0, streams=1)
    reserved = await store.take("k", LIMITED, requests=0, tokens=100, streams=0)
    assert reserved.counted_here

    await store.give_back("k", LIMITED, tokens=70, streams=1, slot=slot, reservation=reserved)

    assert redis.given == [(0, 1, 0, EPOCH)]
    usage = await store._local.usage("k", LIMITED)
    assert usage is not None
    assert usage.tokens == 30


async def test_a_slot_counted_here_goes_back_here_while_tokens_taken_in_redis_go_back_to_redis(
    store_over: Callable[[LostAnswer], RedisLimitStore],
) -> None:
    redis = RedisAwayAtTimes(False, True)
    store = store_over(cast(LostAnswer, redis))
    slot = await store.take("k", LIMITED, requests=1, tokens=0, streams=1)
    assert slot.counted_here
    reserved = await store.take("k", LIMITED, requests=0, tokens=100, streams=0)

    await store.give_back("k", LIMITED, tokens=70, streams=1, slot=slot, reservation=reserved)

    assert redis.given == [(70, 0, EPOCH, 0)]
    usage = await store._local.usage("k", LIMITED)
    assert usage is not None
    assert usage.streams == 0


async def test_a_lease_gives_its_tokens_back_where_its_reservation_was_counted(
    store_over: Callable[[LostAnswer], RedisLimitStore],
) -> None:
    redis = RedisAwayAtTimes(True, False)
    store = store_over(cast(LostAnswer, redis))
    slot = await store.take("k", LIMITED, requests=1, tokens=0, streams=1)  # as take_limits does
    lease = Lease(store, GatewayKey("k", b"", None, LIMITED), slot=slot)
    assert await lease.reserve({"messages": [], "max_tokens": 100}) is None  # its reply lost: counted here

    await lease.release({"total_tokens": 40})

    assert redis.given == [(0, 1, 0, EPOCH)]  # the slot, in its epoch; no tokens
    usage = await store._local.usage("k", LIMITED)
    assert usage is not None
    assert 30 < usage.tokens <= 40  # what it used of its reservation here, less what refilled since; 108 unsettled


class FailsForABugOnce(TakesInOneEpoch):
    """Redis away for a give-back, then failing its retry for a bug, then taking it."""

    def __init__(self) -> None:
        self.sent = 0
        self.applied: list[tuple[int, int]] = []

    async def give_back(self, name: str, *, tokens: int, streams: int, **_: int | str) -> None:
        self.sent += 1
        if self.sent == 1:
            raise LimitsUnavailableError("Redis is unreachable")
        if self.sent == 2:
            raise RuntimeError("a script error")
        self.applied.append((tokens, streams))


async def test_an_owed_give_back_that_fails_for_a_bug_is_kept_and_sent_again(
    store_over: Callable[[LostAnswer], RedisLimitStore],
) -> None:
    # It was dropped with the settling task, and the slot stayed taken in Redis for good.
    redis = FailsForABugOnce()
    store = store_over(cast(LostAnswer, redis))
    slot = await store.take("k", TWO_STREAMS, requests=1, tokens=0, streams=1)

    await store.give_back("k", TWO_STREAMS, tokens=0, streams=1, slot=slot)
    await settled(store)

    assert redis.applied == [(0, 1)]


class NeverAnswers(TakesInOneEpoch):
    """Redis that takes, then answers no give-back: the first finds it down, a retry (`stalls`) waits for ever."""

    def __init__(self, *, stalls: bool) -> None:
        self.stalls = stalls
        self.sent = 0
        self.retried = asyncio.Event()

    async def give_back(self, name: str, **_: int | str) -> None:
        self.sent += 1
        if self.sent > 1 and self.stalls:
            self.retried.set()
            await asyncio.Event().wait()
        raise LimitsUnavailableError("Redis is unreachable")


@pytest.fixture
def logs() -> Iterator[list[EventDict]]:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as events:
        yield events


@pytest.mark.parametrize("stalls", [False, True], ids=["down", "stalled"])
async def test_a_slot_still_owed_when_the_process_stops_is_logged_as_lost_naming_its_key(
    store_over: Callable[[LostAnswer], RedisLimitStore], logs: list[EventDict], stalls: bool
) -> None:
    # Dropped without a word, a key at its max_streams allowed a stream fewer everywhere for good.
    redis = NeverAnswers(stalls=stalls)
    store = store_over(cast(LostAnswer, redis))
    slot = await store.take("k", TWO_STREAMS, requests=1, tokens=0, streams=1)
    if not stalls:
        store._link.failed(ConnectionError("Redis is unreachable"))  # down: the owed give-back waits for it
    await store.give_back("k", TWO_STREAMS, tokens=0, streams=1, slot=slot)
    if stalls:
        await asyncio.wait_for(redis.retried.wait(), 5)  # sent again, and never answered

    await store.close()

    (lost,) = [event for event in logs if event["event"] == "limits_owed_lost"]
    assert (lost["keys"], lost["streams"], lost["log_level"]) == (["k"], 1, "warning")
