"""Mutable per-app state that is not statistics."""

from __future__ import annotations

import asyncio
from itertools import count


class Runtime:
    """Completion id sequence and the shutdown signal of one app."""

    __slots__ = ("_ids", "shutting_down")

    def __init__(self) -> None:
        self._ids = count(1)
        # Hanging requests wait on this so a shutdown does not sit out the
        # server's graceful shutdown timeout.
        self.shutting_down = asyncio.Event()

    def next_completion_id(self) -> str:
        """A fresh `chatcmpl-sim<N>` id."""
        return f"chatcmpl-sim{next(self._ids)}"
