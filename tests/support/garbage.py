"""What only the garbage collector could free: the objects a block of a test left in reference cycles."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def cyclic_garbage() -> Iterator[list[object]]:
    """Collect first, then keep every unreachable object the block leaves (`gc.DEBUG_SAVEALL`).

    The list is filled when the block ends: drop the block's own references to what it made
    (`del`) inside it, so that only cycles remain for the collector.
    """
    gc.collect()
    flags = gc.get_debug()
    gc.set_debug(gc.DEBUG_SAVEALL)
    found: list[object] = []
    try:
        yield found
        gc.collect()
        found.extend(gc.garbage)
    finally:
        gc.set_debug(flags)
        gc.garbage.clear()
