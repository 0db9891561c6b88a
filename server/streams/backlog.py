"""Hold a detached stream's upstream back while its unread events fill their byte budget.

An attached stream is held back by its client's socket: the relay awaits each write. A detached
stream's writes go to the store, which accepts at once, so without this a generation nobody reads
would pull its upstream at full speed. The generation reports what it stored, readers report what
they sent, and before reading more from the upstream the generation waits while more than
`limit` bytes are unread. Nobody reading for the grace period then stops it (see registry.py).
"""

from __future__ import annotations

import asyncio
from collections import deque


class Backlog:
    """Bytes stored but not yet sent to any reader, and a wait for room."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._unread: deque[tuple[int, int]] = deque()  # (seq, size) of events no reader has had
        self._unread_bytes = 0
        self._room = asyncio.Event()
        self._room.set()

    @property
    def unread_bytes(self) -> int:
        """Bytes stored that no reader has been sent yet."""
        return self._unread_bytes

    def stored(self, seq: int, size: int) -> None:
        """The generation stored event `seq` of `size` bytes."""
        self._unread.append((seq, size))
        self._unread_bytes += size
        if self._unread_bytes >= self._limit:
            self._room.clear()

    def sent(self, seq: int) -> None:
        """A reader was sent every event up to `seq`."""
        while self._unread and self._unread[0][0] <= seq:
            self._unread_bytes -= self._unread.popleft()[1]
        if self._unread_bytes < self._limit:
            self._room.set()

    @property
    def full(self) -> bool:
        """True while `limit` bytes or more are unread."""
        return not self._room.is_set()

    async def wait_for_room(self) -> None:
        """Return once fewer than `limit` bytes are unread."""
        await self._room.wait()
