"""A --workers supervisor caught dying: its first thread is gone, another still runs.

`python -m tests.support.half_dead_parent GROUP_DIR PORT GO_FIFO` starts one worker of the group at
GROUP_DIR, naming this process its supervisor, and ends its first thread alone (the exit system
call, not exit_group) once GO_FIFO has been opened and closed. The kernel then signals the parent's
death and hands the worker to the thread left, which waits until the process is killed: what a
killed supervisor is between its threads' exits (its log writer, server/logs.py, goes last).
"""

from __future__ import annotations

import ctypes
import os
import platform
import signal
import sys
import threading
from pathlib import Path

from server.workers import Group, worker_argv

# <asm/unistd.h>: exit, which ends the calling thread only.
SYS_EXIT = {"x86_64": 60, "aarch64": 93}


def main() -> None:
    group_dir, port, go = sys.argv[1:]
    argv = worker_argv(["--port", port, "--config", "config/test.toml"], 0, Group(Path(group_dir)), 1)
    os.posix_spawn(argv[0], argv, os.environ, setsigmask=(signal.SIGHUP,), setpgroup=0)
    threading.Thread(target=threading.Event().wait, daemon=True).start()
    with open(go, "rb") as fifo:
        fifo.read()
    ctypes.CDLL(None, use_errno=True).syscall(SYS_EXIT[platform.machine()], 0)


if __name__ == "__main__":
    main()
