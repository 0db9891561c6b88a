"""Hold a detached stream's upstream back while its unread events fill their budget.

An attached stream is held back by its client's socket: the relay awaits each write. A detached
stream's writes go to the store, which accepts at once, so without this a generation nobody reads
would pull its upstream at full speed. The generation reports what it stored, readers report what
they sent, and before reading more from the upstream the generation waits while `limit` bytes
or `max_events` events are unread. Nobody reading for the grace period then stops it (see
registry.py). The store's byte budget across streams holds it back too (memory.py, `has_room`).

The store keeps `browser.max_buffered_events` events per stream and drops the oldest, read or not;
the generation holds back at half that many unread, so the other half is room for one upstream
read's events and for those already read (a resume). Counting bytes alone, 10,000 small events
(under 1 MiB) were dropped unread long before 4 MiB were: a late reader got 410.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Backlog:
    """Events stored but not yet sent to any reader, and a wait for room."""

    def __init__(self, limit: int, max_events: int | None = None) -> None:
        self._limit = limit
        self._max_events = max_events if max_events is not None else 1 << 62
        self._unread: deque[tuple[int, int]] = deque()  # (seq, size) of events no reader has had
        self._unread_bytes = 0
        self._room = asyncio.Event()
        self._room.set()

    @property
    def unread_bytes(self) -> int:
        """Bytes stored that no reader has been sent yet."""
        return self._unread_bytes

    @property
    def unread_events(self) -> int:
        """Events stored that no reader has been sent yet."""
        return len(self._unread)

    @property
    def room_events(self) -> int:
        """Events that may still be stored before the upstream is held back (at least 1)."""
        return max(1, self._max_events - len(self._unread))

    def stored(self, seq: int, size: int) -> None:
        """The generation stored event `seq` of `size` bytes."""
        self._unread.append((seq, size))
        self._unread_bytes += size
        if self._unread_bytes >= self._limit or len(self._unread) >= self._max_events:
            self._room.clear()

    def sent(self, seq: int) -> None:
        """A reader was sent every event up to `seq`."""
        while self._unread and self._unread[0][0] <= seq:
            self._unread_bytes -= self._unread.popleft()[1]
        if self._unread_bytes < self._limit and len(self._unread) < self._max_events:
            self._room.set()

    @property
    def full(self) -> bool:
        """True while `limit` bytes or `max_events` events or more are unread."""
        return not self._room.is_set()

    async def wait_for_room(self) -> None:
        """Return once fewer than `limit` bytes and `max_events` events are unread."""
        await self._room.wait()
