"""LimitStore on Redis: one count per key across every instance, local limits while Redis is away.

The buckets and their Lua scripts are in limits.py. With Redis unreachable, `fail_open` (the
default) counts in this process meanwhile, so a key gets its limit per instance for that time;
otherwise requests are refused with 503 until Redis answers.

A stream slot goes back where it was taken. One taken here while Redis was away is given back
here, never to Redis (which would free a slot another stream holds there). One taken in Redis
whose give-back finds Redis unreachable (a stall, a blip: no instance died) is owed and given back
as soon as Redis answers again; given back here instead, it stayed taken in Redis for good, and a
key at its `max_streams` was refused everywhere from then on. Redis may have run the give-back
before it was found unreachable (a reply lost to a timeout or a dropped connection): each is owed
under its own id, which Redis applies once, so the slot and tokens are never given back twice.

Each slot taken in Redis is held under this process's lease there, renewed every third of
`redis.slot_lease_seconds` with the count of slots it holds per key (limits.py): if the process
dies, or cannot reach Redis for a lease, the slots come free; once it reaches Redis again, its
renewal counts its live ones again.

A take can be lost the same way: Redis took, but its reply never came, and this process counted
the request here (fail open) or refused it (503). Redis's part, the slot with it, stayed taken and
nothing gave it back. Each take is named by an id, and one that found Redis unreachable owes an
undo of that id, sent with the owed give-backs once Redis answers: Redis gives back what the take
took if it ran, once, and nothing if it never did (limits.py).

A give-back to Redis carries, for each part, the epoch of the key's hash its take took in
(limits.py): a stream from before Redis restarted empty frees nothing in the hash made since, and
one taken since frees its slot there at once. The epochs travel with the request: each take's
decision carries its epoch and where it was counted (`counted_here`), the request's lease keeps the
decisions of its slot's take and of its token reservation, and its give-back names both (`slot`,
`reservation`). Each part goes back where, and in the epoch, its own take counted it: with Redis
away or restarted empty between a request's two takes, they differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import math
import secrets
from typing import NamedTuple, Protocol

import structlog

from ..auth.limits import WINDOW_SECONDS, Decision, Exceeded, KeyLimits, MemoryLimitStore, Usage, taken
from ..errors import ServiceUnavailableError
from .limits import LimitsUnavailableError, RedisLimitBuckets
from .link import PING_INTERVAL, RedisLink

log = structlog.get_logger("sluice.limits")

# The most a usage read (the dashboard's) may wait for Redis before its numbers show as unknown.
USAGE_SECONDS = 0.5
# The longest pause between tries of a debt that failed for a bug (not Redis being away).
OWED_BACKOFF_MAX = 5.0


class _Debt(Protocol):
    """What Redis is owed once it answers: a give-back (`_Owed`) or a take's undo (`_Undo`)."""

    @property
    def name(self) -> str:
        """The gateway key's name."""

    @property
    def streams(self) -> int:
        """The stream slots it gives back."""

    async def send(self, buckets: RedisLimitBuckets, debt_id: str, stamp: int) -> None:
        """Send it to Redis under `debt_id`, which Redis applies once, with this try's `stamp`
        (RedisLimitBuckets.renew); raises LimitsUnavailableError."""


class _Owed(NamedTuple):
    """A give-back Redis was not seen to take: the key, its tpm, the tokens, the streams and the epoch of each."""

    name: str
    tpm: int
    tokens: int
    streams: int
    tokens_epoch: int
    streams_epoch: int

    async def send(self, buckets: RedisLimitBuckets, debt_id: str, stamp: int) -> None:
        await buckets.give_back(
            self.name,
            tpm=self.tpm,
            tokens=self.tokens,
            streams=self.streams,
            give_back_id=debt_id,
            streams_epoch=self.streams_epoch,
            tokens_epoch=self.tokens_epoch,
            stamp=stamp,
        )


class _Undo(NamedTuple):
    """A take whose reply never came, which Redis may have run: the key, its limits and what it asked for."""

    name: str
    limits: KeyLimits
    requests: int
    tokens: int
    streams: int

    async def send(self, buckets: RedisLimitBuckets, debt_id: str, stamp: int) -> None:
        await buckets.undo(
            self.name,
            rpm=self.limits.rpm,
            tpm=self.limits.tpm,
            requests=self.requests,
            tokens=self.tokens,
            streams=self.streams,
            take_id=debt_id,
            stamp=stamp,
        )


class RedisLimitStore:
    """LimitStore whose counts live in Redis."""

    def __init__(self, link: RedisLink, *, retry_after: int) -> None:
        self._link = link
        self._buckets = RedisLimitBuckets(link)
        self._local = MemoryLimitStore()
        self._fail_open = link.settings.fail_open
        self._retry_after = retry_after
        # Per give-back or take id: a give-back Redis was not seen to take, or a take whose reply
        # never came (to undo); sent again under the same id until Redis answers.
        self._owed: dict[str, _Debt] = {}
        self._settling: asyncio.Task[None] | None = None
        # Ids of takes and give-backs: a count after a prefix of this process's own (cheaper than a
        # random id each, ~0.85 µs, and as unique: 64 random bits per process).
        self._id_prefix = secrets.token_hex(8) + "-"
        self._ids = itertools.count()
        # Orders the changes of this process's slot counts and its renewals as they are sent: a
        # renewal whose count a later change crossed does not set it (RedisLimitBuckets.renew).
        self._stamps = itertools.count(1)
        # Per key: the stream slots this process may hold in Redis, which its lease renews and its count
        # is set to (`renew_leases`). Counted from a take's sending until its give-back (or undo) is seen
        # to reach Redis.
        self._slots: dict[str, int] = {}
        # Per key: takes and give-backs of its slots sent and not answered yet, and debts (owed undos and
        # give-backs, which may still land) until settled. A renewal sets no count while one is on its
        # way: the count could not tell whether it landed before the renewal.
        self._on_the_way: dict[str, int] = {}
        self._renewing: asyncio.Task[None] | None = None

    async def close(self) -> None:
        """Stop renewing leases and waiting to give back what Redis is owed (the process is stopping).

        A slot still owed stays counted in Redis until this process's lease on it lapses
        (`redis.slot_lease_seconds`); tokens owed are lost. The line names the keys (never a key itself).
        """
        for task in (self._settling, self._renewing):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._owed:
            lost, self._owed = list(self._owed.values()), {}
            log.warning(
                "limits_owed_lost",
                # "May be": one on its way when the process stopped may have reached Redis.
                message="Redis did not answer before this process stopped: these keys' give-backs may be lost",
                keys=sorted({debt.name for debt in lost}),
                streams=sum(debt.streams for debt in lost),
            )

    async def take(self, name: str, limits: KeyLimits, *, requests: int, tokens: int, streams: int) -> Decision:
        if self._link.up:
            # Names this take in Redis, so that it can be undone if its reply is lost.
            take_id = self._new_id()
            if streams:
                self._hold(name, streams)
                self._sending(name, 1)
            try:
                taken = await self._buckets.take(
                    name,
                    rpm=limits.rpm,
                    tpm=limits.tpm,
                    max_streams=limits.max_streams,
                    requests=requests,
                    tokens=tokens,
                    streams=streams,
                    take_id=take_id,
                    stamp=next(self._stamps) if streams else 0,
                )
            except LimitsUnavailableError:
                # Redis may have taken before its reply was lost: counted here or refused, the
                # request must not also hold its share in Redis.
                self._owe(take_id, _Undo(name, limits, requests, tokens, streams))
            except BaseException:
                # The request left (a client gone) while its take was on its way, or the take failed
                # for a bug: Redis may run it, and the slot stays held here until the undo lands.
                self._owe(take_id, _Undo(name, limits, requests, tokens, streams))
                raise
            else:
                if streams and taken.exceeded:
                    self._hold(name, -streams)
                return Decision(
                    exceeded=Exceeded(taken.exceeded) if taken.exceeded else None,
                    limits=limits,
                    remaining_requests=max(0, math.floor(taken.requests_level)) if limits.rpm else 0,
                    remaining_tokens=max(0, math.floor(taken.tokens_level)) if limits.tpm else 0,
                    reset_requests=_until_full(taken.requests_level, limits.rpm),
                    reset_tokens=_until_full(taken.tokens_level, limits.tpm),
                    retry_after=taken.retry_after,
                    epoch=taken.epoch,
                )
            finally:
                if streams:
                    self._sending(name, -1)
        if not self._fail_open and (limits.rpm or limits.tpm or limits.max_streams):
            # Fail closed protects limits; a key with none has nothing to protect, and is served.
            raise ServiceUnavailableError(
                "Sluice cannot reach Redis to count this key's use; retry shortly.",
                code="limits_unavailable",
                headers={"Retry-After": str(self._retry_after)},
            )
        decision = await self._local.take(name, limits, requests=requests, tokens=tokens, streams=streams)
        return dataclasses.replace(decision, counted_here=True)

    async def give_back(
        self,
        name: str,
        limits: KeyLimits,
        *,
        tokens: int,
        streams: int,
        slot: Decision | None = None,
        reservation: Decision | None = None,
    ) -> None:
        # Each part goes back where its take counted it: a request's slot and its tokens are two
        # takes, and Redis may have answered one and not the other. Given back to Redis, a part
        # counted here freed what another instance's request holds (or, after its take's undo, was
        # given twice).
        streams_here = slot is not None and slot.counted_here
        tokens_here = reservation is not None and reservation.counted_here
        if streams_here or tokens_here:
            await self._local.give_back(
                name, limits, tokens=tokens if tokens_here else 0, streams=streams if streams_here else 0
            )
        # In Redis, each in the epoch its take took in; 0 (taken here, or not at all) gives nothing there.
        streams_epoch = slot.epoch if streams and slot is not None else 0
        tokens_epoch = reservation.epoch if tokens and reservation is not None else 0
        if not streams_epoch and not tokens_epoch:
            return
        tokens, streams = tokens if tokens_epoch else 0, streams if streams_epoch else 0
        # Names this give-back in Redis, which applies it once however often it is sent (`_settle_when_up`).
        give_back_id = self._new_id()
        if streams:
            self._sending(name, 1)
        try:
            await self._buckets.give_back(
                name,
                tpm=limits.tpm,
                tokens=tokens,
                streams=streams,
                give_back_id=give_back_id,
                streams_epoch=streams_epoch,
                tokens_epoch=tokens_epoch,
                stamp=next(self._stamps) if streams else 0,
            )
        except LimitsUnavailableError:
            self._owe(give_back_id, _Owed(name, limits.tpm, tokens, streams, tokens_epoch, streams_epoch))
        except BaseException:
            # Cancelled on its way (a client that left as its stream ended, the process stopping), or
            # failed for a bug: owed as if Redis were away. Dropped, its slot stayed held here, and
            # every renewal kept it counted in Redis for as long as this process lived.
            self._owe(give_back_id, _Owed(name, limits.tpm, tokens, streams, tokens_epoch, streams_epoch))
            raise
        else:
            if streams:
                self._hold(name, -streams)
        finally:
            if streams:
                self._sending(name, -1)

    def _sending(self, name: str, change: int) -> None:
        """Count a take or give-back of `name`'s slots as on its way to Redis (1), or landed (-1)."""
        count = self._on_the_way.get(name, 0) + change
        if count:
            self._on_the_way[name] = count
        else:
            del self._on_the_way[name]

    def _hold(self, name: str, streams: int) -> None:
        """Count `streams` more (or fewer) slots of `name` as held by this process in Redis, under its lease."""
        self._slots[name] = self._slots.get(name, 0) + streams
        if self._renewing is None:
            self._renewing = asyncio.create_task(self._renew_leases(), name="sluice-limits-leases")

    async def _renew_leases(self) -> None:
        """Renew this process's leases every third of `redis.slot_lease_seconds`, while Redis answers."""
        interval = self._link.settings.slot_lease_seconds / 3
        while True:
            await asyncio.sleep(interval)  # a renewal period, not a synchronisation
            if not self._slots or not self._link.up:
                continue  # the link probes Redis meanwhile; a lease lasts three periods
            try:
                await self.renew_leases()
            except LimitsUnavailableError:
                continue
            except Exception:
                log.exception("limits_lease_renewal_failed")

    async def renew_leases(self) -> None:
        """Renew this process's lease on the stream slots it holds, per key, and set their count; once.

        Setting the count mends it: slots Redis let lapse (this process could not reach it for a
        lease, or was frozen; Redis restarted empty) are counted again, and a count a give-back or
        undo left wrong is corrected. Not while a take or give-back of the key is on its way: the
        count read here could not tell whether it landed first (a lapsed count is set even then).
        One sent after the counts were read and landing first keeps its key's count from being set
        (the stamps). A key none of whose slots are held is forgotten here, not withdrawn: a
        withdrawal crossing a take on its way would lose it, and what is left lapses with the lease.
        Raises LimitsUnavailableError.
        """
        for name in [name for name, streams in self._slots.items() if streams <= 0]:
            del self._slots[name]
        if self._slots:
            on_the_way = self._on_the_way
            held = [(name, held, name not in on_the_way) for name, held in self._slots.items()]
            await self._buckets.renew(held, stamp=next(self._stamps))

    def _new_id(self) -> str:
        """An id no other take or give-back has, in this process or any other: a random prefix and a count."""
        return f"{self._id_prefix}{next(self._ids)}"

    def _owe(self, debt_id: str, debt: _Debt) -> None:
        self._owed[debt_id] = debt
        if debt.streams:
            self._sending(debt.name, 1)  # may still land, until its debt is settled
        if self._settling is None or self._settling.done():
            self._settling = asyncio.create_task(self._settle_when_up(), name="sluice-limits-owed")

    async def _settle_when_up(self) -> None:
        """Send Redis what it is owed once it answers; again after each failed try, under the same ids."""
        pause = PING_INTERVAL
        while self._owed:
            await self._link.wait_up(float("inf"))
            # Each stays owed until Redis took it: cancelled on its way (the process stopping), it is
            # still there for `close` to report.
            for debt_id, debt in list(self._owed.items()):
                try:
                    await self._send_debt(debt_id, debt)
                except LimitsUnavailableError:
                    break  # gone again: the rest waits for it too, not a timeout each
                except Exception:
                    # A bug (a script error, an ACL): said, and kept for a later try, never dropped;
                    # behind the others, so one that keeps failing does not hold them all back.
                    log.exception("limits_owed_failed")
                    self._owed[debt_id] = self._owed.pop(debt_id)
                    await asyncio.sleep(pause)  # a retry pace, not a synchronisation
                    pause = min(OWED_BACKOFF_MAX, pause * 2)
                    break
                del self._owed[debt_id]
                if debt.streams:
                    self._sending(debt.name, -1)
                    self._hold(debt.name, -debt.streams)
                pause = PING_INTERVAL
        log.info("limits_owed_given_back")

    async def _send_debt(self, debt_id: str, debt: _Debt) -> None:
        """Send one debt (its key counts as on its way from `_owe` until it is settled)."""
        await debt.send(self._buckets, debt_id, next(self._stamps) if debt.streams else 0)

    async def usage(self, name: str, limits: KeyLimits) -> Usage | None:
        # Only the dashboard reads this: a slow or absent Redis makes it "unknown", never a wait.
        if not self._link.up:
            return None
        try:
            async with asyncio.timeout(USAGE_SECONDS):
                requests, tokens, streams = await self._buckets.levels(name, rpm=limits.rpm, tpm=limits.tpm)
        except (LimitsUnavailableError, TimeoutError):
            return None
        return Usage(streams=streams, requests=taken(requests, limits.rpm), tokens=taken(tokens, limits.tpm))


def _until_full(level: float, capacity: int) -> float:
    return max(0.0, (capacity - level) * WINDOW_SECONDS / capacity) if capacity else 0.0
