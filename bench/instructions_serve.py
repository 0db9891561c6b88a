"""Run a process under test with cProfile switched on by SIGUSR1 and off (and dumped) by SIGUSR2.

`python -m bench.instructions_serve STATS SCRIPT [ARGS...]` or `... STATS -m MODULE [ARGS...]`:
used by `python -m bench.instructions --profile`, so that only the measured streams are profiled.
"""

from __future__ import annotations

import cProfile
import runpy
import signal
import sys
from types import FrameType


def main() -> None:
    """Install the two signal handlers, then run the target as `__main__`."""
    stats, target = sys.argv[1], sys.argv[2:]
    profiler = cProfile.Profile()

    def start(_signum: int, _frame: FrameType | None) -> None:
        profiler.enable()

    def stop(_signum: int, _frame: FrameType | None) -> None:
        profiler.disable()
        profiler.dump_stats(stats)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    if target[0] == "-m":
        sys.argv = [target[1], *target[2:]]
        runpy.run_module(target[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = target
        runpy.run_path(target[0], run_name="__main__")


if __name__ == "__main__":
    main()
