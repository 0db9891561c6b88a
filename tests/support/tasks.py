"""A task a test starts ends with the test, also when the test fails before it awaited the task."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

T = TypeVar("T")


@contextlib.asynccontextmanager
async def running(awaitable: Awaitable[T]) -> AsyncIterator[asyncio.Task[T]]:
    """`awaitable` as a task for the block; at the block's end cancelled if still pending, and awaited."""
    task = asyncio.ensure_future(awaitable)
    try:
        yield task
    finally:
        task.cancel()  # nothing, once it is done: a test that passed awaited it already
        await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # retrieved: its failure, after the test's own, is not logged at collection
