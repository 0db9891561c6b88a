"""Give the C heap's free memory back to the system once many streams ended together.

What a stream holds beyond its Python objects is mostly its bytes buffers over 512 bytes (the
client transport's queued writes, an upstream read being relayed), which Python takes from
glibc's heap. When they are freed, glibc keeps the pages: it returns only a free run at the very
top of the heap, and a heap that grew under 200 stalled readers has live allocations above their
buffers. Measured (200 stalled readers, `/v1`, 1.5 s after they left): the heap held 6.1 MiB
free of 21 MiB, and the process 11.4 MiB above its RSS before them; `malloc_trim(0)` (which also
returns whole free pages inside the heap) gave back 5.5 of those 6.1 MiB. The rest is Python's
own small-object arenas (1 MiB each), freed only once every object in one is: a few objects made
during the stall and kept hold them (tracemalloc: chiefly the chunk parser's cache of each
stream's fixed fields, three objects a stream, chunks.py `_plain_fields`).

Chosen over lowering glibc's mmap threshold (`mallopt(M_MMAP_THRESHOLD)`), which returns a
large buffer as it is freed but costs a `mmap`, a `munmap` and its page faults for every 16 KiB
read of a burst: here one trim runs a moment after the live streams fell to under half their
peak, by at least `MIN_DROP`, which a steady load never does. Without glibc (musl, macOS), no trim.
"""

from __future__ import annotations

import asyncio
import ctypes
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger("sluice.allocator")

# Fewer streams than this ending together leave too little to be worth a walk of the heap.
MIN_DROP = 64
# Seconds between the fall and the trim: the streams' connections are closed and their buffers
# freed by then, and a crowd still leaving is trimmed for once.
TRIM_DELAY = 0.25


def malloc_trim() -> Callable[[], object] | None:
    """glibc's `malloc_trim(0)`, or None when the C library has none."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class HeapTrim:
    """Trims the heap once a moment after the live streams fell to under half their peak."""

    __slots__ = ("_delay", "_peak", "_pending", "_trim")

    def __init__(self, trim: Callable[[], object] | None = None, *, delay: float = TRIM_DELAY) -> None:
        self._trim = trim if trim is not None else malloc_trim()
        self._delay = delay
        self._peak = 0
        self._pending = False

    @property
    def pending(self) -> bool:
        """True while a trim is due."""
        return self._pending

    def rose(self, live: int) -> None:
        """A stream started: `live` streams now."""
        if live > self._peak:
            self._peak = live

    def fell(self, live: int) -> None:
        """A stream ended: `live` streams now."""
        peak = self._peak
        if live * 2 < peak and peak - live >= MIN_DROP:
            self._peak = live
            if not self._pending and self._trim is not None:
                self._pending = True
                asyncio.get_running_loop().call_later(self._delay, self._run, peak)

    def _run(self, peak: int) -> None:
        self._pending = False
        if self._trim is None:
            return
        started = time.perf_counter()
        self._trim()
        log.debug("heap_trimmed", streams_before=peak, took_ms=round((time.perf_counter() - started) * 1000, 2))
