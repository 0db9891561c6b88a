"""When each tagged request opened and closed, and waits for a close (GET /_sim/requests/{id})."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

# Records kept; the oldest closed ones go first.
CAPACITY = 50_000


@dataclass(slots=True, eq=False)
class Record:
    """One request that carried an X-Request-ID, in the simulator's record shape."""

    request_id: str
    opened_at: float
    closed_at: float | None = None
    outcome: str = "active"
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def close(self, outcome: str) -> None:
        """Note the end (the first one counts), with `time.time()` like the simulator."""
        if self.closed_at is None:
            self.closed_at = time.time()
            self.outcome = outcome
            self.closed.set()

    def to_json(self, timed_out: bool) -> dict[str, object]:
        """The fields the load generator reads, named as the simulator names them."""
        return {
            "request_id": self.request_id,
            "opened_at": self.opened_at,
            "closed_at": self.closed_at,
            "outcome": self.outcome,
            "timed_out": timed_out,
        }


class Records:
    """Tagged requests by id; an untagged request has no record and costs nothing here."""

    def __init__(self) -> None:
        self._by_id: dict[str, Record] = {}

    def open(self, request_id: str) -> Record:
        """Start a record."""
        if len(self._by_id) >= CAPACITY:
            self._prune()
        record = self._by_id[request_id] = Record(request_id, time.time())
        return record

    async def wait_closed(self, request_id: str, wait_s: float) -> dict[str, object] | None:
        """The record once closed (or after `wait_s` seconds); None for an id never seen."""
        record = self._by_id.get(request_id)
        if record is None:
            return None
        try:
            async with asyncio.timeout(wait_s):
                await record.closed.wait()
        except TimeoutError:
            return record.to_json(timed_out=True)
        return record.to_json(timed_out=False)

    def _prune(self) -> None:
        closed = [rid for rid, record in self._by_id.items() if record.closed_at is not None]
        for rid in closed[: len(closed) // 2 or None]:
            del self._by_id[rid]
