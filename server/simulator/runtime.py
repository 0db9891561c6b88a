"""Mutable per-app state that is not statistics."""

from __future__ import annotations

import asyncio
from itertools import count


class Runtime:
    """Completion id sequence and the shutdown signal of one app."""

    __slots__ = ("_attempts", "_ids", "shutting_down")

    # Request ids remembered for `fail_times`; the oldest are forgotten beyond this.
    MAX_REMEMBERED = 100_000

    def __init__(self) -> None:
        self._ids = count(1)
        # Hanging requests wait on this so a shutdown does not sit out the
        # server's graceful shutdown timeout.
        self.shutting_down = asyncio.Event()
        self._attempts: dict[str, int] = {}

    def attempt(self, request_id: str) -> int:
        """Count one more attempt of `request_id`; return its number, from 1."""
        number = self._attempts.pop(request_id, 0) + 1
        self._attempts[request_id] = number
        if len(self._attempts) > self.MAX_REMEMBERED:
            del self._attempts[next(iter(self._attempts))]
        return number

    def next_completion_id(self) -> str:
        """A fresh `chatcmpl-sim<N>` id."""
        return f"chatcmpl-sim{next(self._ids)}"
