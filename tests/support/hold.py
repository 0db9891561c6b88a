"""Hold a child process at a point of its life while the test acts on it, then let it go.

A `sitecustomize` module (found through the environment's PYTHONPATH) makes the process open a FIFO
for reading at that point, where it waits until the test closes the writing end: what the test does
meanwhile lands inside the window every time, never by luck of timing.
"""

from __future__ import annotations

import os
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Hold:
    """The environment that holds a process at `point`, and the FIFO that lets it go."""

    environ: dict[str, str]
    pipe: Path
    point: str  # for the failure message: "its first import of server"

    @contextmanager
    def held(self, within: float) -> Iterator[None]:
        """Return once the process waits at the point (within `within` seconds); let it go at the block's end."""
        writer: list[int] = []
        opened = threading.Thread(target=lambda: writer.append(os.open(self.pipe, os.O_WRONLY)), daemon=True)
        opened.start()
        opened.join(within)
        try:
            assert writer, f"the process never reached {self.point}"
            yield
        finally:
            if not writer:  # free the thread still waiting to open it
                os.close(os.open(self.pipe, os.O_RDONLY | os.O_NONBLOCK))
                opened.join(within)
            for fd in writer:
                os.close(fd)


def _hold(tmp_path: Path, point: str, install: str, condition: str) -> Hold:
    """A Hold: a process meeting `condition` runs `install` as it starts, which calls `_wait()` at the point."""
    pipe = tmp_path / "held"
    os.mkfifo(pipe)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import sys\n"
        "def _wait():\n"
        f"    with open({str(pipe)!r}, 'rb') as pipe:\n"
        "        pipe.read()\n"
        f"if {condition}:\n" + textwrap.indent(install, "    "),
        encoding="utf-8",
    )
    return Hold({"PYTHONPATH": str(hook)}, pipe, point)


def hold_at_import(tmp_path: Path, module: str, condition: str = "True") -> Hold:
    """Hold a process meeting `condition` at its first import of `module`."""
    install = (
        "class _Hold:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name == {module!r}:\n"
        "            sys.meta_path.remove(self)\n"
        "            _wait()\n"
        "        return None\n"
        "sys.meta_path.insert(0, _Hold())\n"
    )
    return _hold(tmp_path, f"its first import of {module}", install, condition)


def hold_at_exit(tmp_path: Path, condition: str) -> Hold:
    """Hold a process meeting `condition` as it exits (an `atexit` hook): it has logged all it will."""
    return _hold(tmp_path, "its exit", "import atexit\natexit.register(_wait)\n", condition)
