"""The heap trim after many streams ended together: once, only after a large fall, and from the lifecycle.

The trim itself is a counting stand-in (the real one is glibc's, whose effect is an RSS figure:
bench `stalled-200`, "RSS still held after they left"); it runs with no delay, waited for through
a future it sets.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any

import pytest

from server.allocator import MIN_DROP, HeapTrim, malloc_trim
from server.lifecycle import Lifecycle

SECONDS = 10  # a bound far from any real wait here


class CountingTrim:
    """Counts the trims; `next_call` resolves at the next one."""

    def __init__(self) -> None:
        self.calls = 0
        self.next_call: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def __call__(self) -> None:
        self.calls += 1
        if not self.next_call.done():
            self.next_call.set_result(None)


def run_up_and_down(heap: HeapTrim, peak: int, down_to: int) -> None:
    for live in range(1, peak + 1):
        heap.rose(live)
    for live in range(peak - 1, down_to - 1, -1):
        heap.fell(live)


async def test_the_heap_is_trimmed_once_after_the_live_streams_fell_to_under_half_their_peak() -> None:
    trim = CountingTrim()
    heap = HeapTrim(trim, delay=0)
    run_up_and_down(heap, 200, 0)
    async with asyncio.timeout(SECONDS):
        await trim.next_call
    assert trim.calls == 1
    assert not heap.pending


async def test_after_a_trim_the_next_fall_is_measured_from_what_was_left() -> None:
    """200 fell to 99: trimmed. Then 99 to 60 is no fall to under half: no second trim."""
    trim = CountingTrim()
    heap = HeapTrim(trim, delay=0)
    run_up_and_down(heap, 200, 99)
    async with asyncio.timeout(SECONDS):
        await trim.next_call
    for live in range(98, 59, -1):
        heap.fell(live)
    assert not heap.pending
    assert trim.calls == 1


async def test_fewer_than_min_drop_streams_ending_never_trim() -> None:
    trim = CountingTrim()
    heap = HeapTrim(trim, delay=0)
    run_up_and_down(heap, MIN_DROP - 1, 0)
    assert not heap.pending


async def test_the_lifecycle_trims_once_most_of_its_live_requests_ended() -> None:
    trim = CountingTrim()
    lifecycle = Lifecycle(retry_after=5, max_live=0, heap=HeapTrim(trim, delay=0))
    blocks = [lifecycle.track(guard) for guard in [object() for _ in range(2 * MIN_DROP)]]  # type: ignore[arg-type]
    for block in blocks:
        block.__enter__()
    for block in blocks:
        block.__exit__(None, None, None)
    async with asyncio.timeout(SECONDS):
        await trim.next_call
    assert trim.calls == 1


class _Reader:
    def shutdown(self) -> None:
        """What the drain asks of a reader (not here)."""


async def test_the_lifecycle_trims_once_most_of_its_browser_stream_readers_left() -> None:
    trim = CountingTrim()
    lifecycle = Lifecycle(retry_after=5, max_live=0, reader_heap=HeapTrim(trim, delay=0))
    with contextlib.ExitStack() as readers:
        for _ in range(2 * MIN_DROP):
            readers.enter_context(lifecycle.reading(_Reader()))
    async with asyncio.timeout(SECONDS):
        await trim.next_call
    assert trim.calls == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_glibcs_malloc_trim_is_found_and_runs() -> None:
    trim: Any = malloc_trim()
    assert trim is not None
    trim()
