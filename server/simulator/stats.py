"""What the simulator saw: one record per chat request, plus long-poll waits.

Tests use this to check what actually reached the upstream (did the gateway
forward the abort? did the client stop reading?). Waiting is event driven:
each record owns asyncio.Events, and waiters for a request id that has not
arrived yet share one refcounted event, so nothing polls.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import count, islice
from typing import TypedDict


class Outcome(StrEnum):
    """How a request ended, from the simulator's side."""

    ACTIVE = "active"
    COMPLETED = "completed"
    CLIENT_ABORTED = "client_aborted"
    FAULT = "fault"


class Until(StrEnum):
    """States a long poll can wait for."""

    OPENED = "opened"
    PAUSED = "paused"
    CLOSED = "closed"


@dataclass(slots=True, eq=False)
class StreamRecord:
    """One chat request. The streaming loop updates the counters directly."""

    request_id: str
    model: str
    stream: bool
    opened_at: float
    first_token_at: float | None = None
    closed_at: float | None = None
    outcome: Outcome = Outcome.ACTIVE
    # Content chunks sent, over all choices (a request's `n`).
    chunks_sent: int = 0
    paused: bool = False
    # The role of the request's last message: "assistant" for a prefill (a continuation).
    last_role: str | None = None
    # The request body as received: tests check what reached the upstream, byte for byte.
    body: bytes = b""
    # Set when the stream pauses *or* closes: a closed stream can never pause,
    # so an until=paused waiter must not sleep until its timeout.
    pause_settled: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    closed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def to_json(self) -> dict[str, object]:
        """The public view of the record."""
        return {
            "request_id": self.request_id,
            "model": self.model,
            "stream": self.stream,
            "opened_at": self.opened_at,
            "first_token_at": self.first_token_at,
            "closed_at": self.closed_at,
            "outcome": self.outcome.value,
            "chunks_sent": self.chunks_sent,
            "paused": self.paused,
            "last_role": self.last_role,
            "body": self.body.decode("utf-8", "replace"),
        }


class StatsSnapshot(TypedDict):
    """The body of GET /_sim/stats."""

    opened: int
    completed: int
    aborted: int
    faulted: int
    active: int
    streams: list[dict[str, object]]


@dataclass(slots=True, eq=False)
class _Arrival:
    """Shared by everyone waiting for a request id that has not opened yet."""

    event: asyncio.Event = field(default_factory=asyncio.Event)
    waiters: int = 0
    record: StreamRecord | None = None


class StatsRegistry:
    """Bounded store of request records with counters and long-poll support."""

    def __init__(self, capacity: int = 10_000, listed: int = 1_000) -> None:
        self._capacity = capacity
        self._listed = listed
        self._sequence = count()
        # Insertion ordered, so the first entries are the oldest.
        self._records: dict[int, StreamRecord] = {}
        self._by_id: dict[str, StreamRecord] = {}
        self._arrivals: dict[str, _Arrival] = {}
        self._opened = 0
        self._active = 0
        self._ended = dict.fromkeys(Outcome, 0)

    def open(self, request_id: str, model: str, stream: bool) -> StreamRecord:
        """Start recording a request; a repeated id points at the newest one."""
        record = StreamRecord(request_id, model, stream, time.time())
        self._records[next(self._sequence)] = record
        self._by_id[request_id] = record
        self._opened += 1
        self._active += 1
        arrival = self._arrivals.pop(request_id, None)
        if arrival is not None:
            arrival.record = record
            arrival.event.set()
        if len(self._records) > self._capacity:
            self._prune()
        return record

    def mark_paused(self, record: StreamRecord) -> None:
        """Note that the client stopped reading fast enough (transport paused)."""
        record.paused = True
        record.pause_settled.set()

    def close(self, record: StreamRecord, outcome: Outcome) -> None:
        """Finish a record; later calls for the same record are ignored."""
        if record.outcome is not Outcome.ACTIVE:
            return
        record.outcome = outcome
        record.closed_at = time.time()
        self._active -= 1
        self._ended[outcome] += 1
        record.pause_settled.set()
        record.closed.set()

    def __len__(self) -> int:
        """Number of records held."""
        return len(self._records)

    def snapshot(self) -> StatsSnapshot:
        """Counters plus the most recent records, oldest first."""
        recent = list(islice(reversed(self._records.values()), self._listed))
        recent.reverse()
        return {
            "opened": self._opened,
            "completed": self._ended[Outcome.COMPLETED],
            "aborted": self._ended[Outcome.CLIENT_ABORTED],
            "faulted": self._ended[Outcome.FAULT],
            "active": self._active,
            "streams": [record.to_json() for record in recent],
        }

    def reset(self) -> None:
        """Forget closed records and zero the counters.

        Active records stay (their handlers will still close them), counted
        as opened, so the counters stay consistent.
        """
        self._records = {seq: r for seq, r in self._records.items() if r.outcome is Outcome.ACTIVE}
        self._by_id = {r.request_id: r for r in self._records.values()}
        self._opened = self._active = len(self._records)
        self._ended = dict.fromkeys(Outcome, 0)

    def all_for(self, request_id: str) -> list[StreamRecord]:
        """Every record kept for a request id (one per attempt), oldest first."""
        return [record for record in self._records.values() if record.request_id == request_id]

    def find(self, request_id: str) -> StreamRecord | None:
        """The newest record for a request id, if any."""
        return self._by_id.get(request_id)

    async def wait(self, request_id: str, until: Until) -> StreamRecord:
        """Wait until the request reaches `until` (bound it with asyncio.timeout)."""
        record = self._by_id.get(request_id) or await self._arrival(request_id)
        if until is Until.PAUSED:
            await record.pause_settled.wait()
        elif until is Until.CLOSED:
            await record.closed.wait()
        return record

    async def _arrival(self, request_id: str) -> StreamRecord:
        arrival = self._arrivals.get(request_id)
        if arrival is None:
            arrival = self._arrivals[request_id] = _Arrival()
        arrival.waiters += 1
        try:
            await arrival.event.wait()
        finally:
            arrival.waiters -= 1
            # The last waiter to give up removes the entry, keeping memory bounded.
            if arrival.waiters == 0 and self._arrivals.get(request_id) is arrival:
                del self._arrivals[request_id]
        assert arrival.record is not None
        return arrival.record

    def _prune(self) -> None:
        # Drop to 90% of capacity so pruning runs once per many requests.
        excess = len(self._records) - self._capacity * 9 // 10
        doomed: list[int] = []
        for seq, record in self._records.items():
            if len(doomed) == excess:
                break
            if record.outcome is not Outcome.ACTIVE:
                doomed.append(seq)
        for seq in doomed:
            record = self._records.pop(seq)
            if self._by_id.get(record.request_id) is record:
                del self._by_id[record.request_id]
