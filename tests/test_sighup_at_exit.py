"""A signal at the very end of a process's shutdown, after the drain's and the key reload's handlers are
gone, is ignored: the process still exits 0 (SIGHUP's and SIGTERM's default actions would kill it, SIGINT's
would raise KeyboardInterrupt). A worker of a --workers group and a single process, each held at its exit
(an `atexit` hook waiting on a pipe) while the test sends the signal."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.support.hold import hold_at_exit
from tests.support.processes import start_gateway
from tests.test_workers import EXIT_SECONDS, start_listening


def test_a_worker_sent_sighup_as_it_exits_after_a_stop_exits_zero(tmp_path: Path) -> None:
    hold = hold_at_exit(
        tmp_path, "'--worker-index' in sys.argv and sys.argv[sys.argv.index('--worker-index') + 1] == '0'"
    )
    running = start_listening(["--config", "config/test.toml"], **hold.environ)
    try:
        worker = running.pid(0)
        running.process.signal(signal.SIGTERM)
        with hold.held(EXIT_SECONDS):
            os.kill(worker, signal.SIGHUP)
        assert running.process.wait(EXIT_SECONDS) == 0
        running.process.stop()
        assert {e["worker_index"]: e["code"] for e in running.process.events("worker_exited")} == {0: 0, 1: 0}
    finally:
        running.stop()


def test_a_single_process_sent_sighup_as_it_exits_after_a_stop_exits_zero(tmp_path: Path) -> None:
    hold = hold_at_exit(tmp_path, "sys.argv[0].endswith('run.py')")
    with start_gateway(env=hold.environ) as gateway:
        gateway.process.signal(signal.SIGTERM)
        with hold.held(EXIT_SECONDS):
            os.kill(gateway.process.pid, signal.SIGHUP)
        assert gateway.process.wait(EXIT_SECONDS) == 0


@pytest.mark.parametrize("late", [signal.SIGTERM, signal.SIGINT])
def test_a_single_process_sent_a_stop_signal_again_as_it_exits_exits_zero_without_a_traceback(
    tmp_path: Path, late: signal.Signals
) -> None:
    hold = hold_at_exit(tmp_path, "sys.argv[0].endswith('run.py')")
    with start_gateway(env=hold.environ) as gateway:
        gateway.process.signal(signal.SIGTERM)
        with hold.held(EXIT_SECONDS):
            os.kill(gateway.process.pid, late)
        assert gateway.process.wait(EXIT_SECONDS) == 0
        assert not [line for line in gateway.process.lines if "Traceback" in line]
