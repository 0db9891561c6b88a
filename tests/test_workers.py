"""The --workers supervisor as real processes: backoff, giving up on a worker that cannot start, signals."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from tests.support.processes import ManagedProcess, clean_env, free_port

# Generous bounds for a loaded machine; none of them is a speed claim.
EXIT_SECONDS = 60


def supervisor(port: int, workers: int = 2, **environ: str) -> ManagedProcess:
    argv = [sys.executable, "run.py", "--port", str(port), "--config", "config/test.toml", "--workers", str(workers)]
    return ManagedProcess(argv, clean_env(environ)).start()


@pytest.fixture
def dying_workers(tmp_path: Path) -> dict[str, str]:
    """An environment in which every worker exits with status 3 as its interpreter starts."""
    (tmp_path / "sitecustomize.py").write_text(
        "import os, sys\nif '--worker-index' in sys.argv:\n    os._exit(3)\n", encoding="utf-8"
    )
    return {"PYTHONPATH": str(tmp_path)}


def test_a_worker_that_cannot_bind_makes_the_supervisor_give_up_at_once_with_one_line(taken_port: int) -> None:
    process = supervisor(taken_port)
    try:
        assert process.wait(EXIT_SECONDS) == 2
        process.stop()  # collects the remaining output
        (gave_up,) = process.events("workers_gave_up")
        assert gave_up["level"] == "error"
        assert gave_up["code"] == 2
        assert "could not start" in gave_up["message"]
        # A start-up mistake is not retried: only the first two workers ever started.
        assert len(process.events("worker_started")) == 2
        assert any(f"cannot listen on 127.0.0.1:{taken_port}" in line for line in process.lines)
        assert process.events("supervisor_stopped")
    finally:
        process.stop()


def test_a_worker_that_keeps_dying_is_restarted_with_doubling_backoff_then_given_up(
    dying_workers: dict[str, str],
) -> None:
    process = supervisor(free_port(), workers=2, **dying_workers)
    try:
        assert process.wait(EXIT_SECONDS) == 1
        process.stop()
        (gave_up,) = process.events("workers_gave_up")
        index = gave_up["worker_index"]
        assert gave_up["attempts"] == 5
        assert gave_up["code"] == 3
        delays = [e["restart_in"] for e in process.events("worker_died") if e["worker_index"] == index]
        assert delays == [0.1, 0.2, 0.4, 0.8]
        # Five starts of the failing position, none after giving up.
        starts = [e for e in process.events("worker_started") if e["worker_index"] == index]
        assert len(starts) == 5
    finally:
        process.stop()


def test_a_stop_signal_while_a_replacement_waits_stops_everything_and_starts_nothing(
    dying_workers: dict[str, str],
) -> None:
    process = supervisor(free_port(), workers=2, **dying_workers)
    try:
        process.wait_for_event("worker_died")  # a replacement is now waiting for its backoff
        process.signal(signal.SIGTERM)
        assert process.wait(EXIT_SECONDS) == 0
        process.stop()
        started = [e["worker_pid"] for e in process.events("worker_started")]
        for pid in started:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        assert not process.events("workers_gave_up")
    finally:
        process.stop()
