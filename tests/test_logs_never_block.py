"""Log lines never hold the gateway up: a stdout reader that stalls (a slow log driver, journald)
costs lines, counted, never a request, `/livez` or the SIGTERM drain; a reader that reads gets
every line, whole, the last ones at exit too.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import json
import os
import select
import signal
import subprocess
import sys
import termios
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from server.logs import MAX_PENDING_LINES, LossyStream
from tests.conftest import TEST_CONFIG
from tests.support.leftovers import children, end_workers
from tests.support.processes import ROOT, ManagedProcess, Simulator, clean_env, free_port

# One page, the least a pipe holds: a few lines fill it (a default pipe takes ~110 access lines).
# The kernel gives at least a page: 64 KiB where pages are that large, so every test sizes its
# work by the capacity the pipe got (`pipe()`), never by this.
PIPE_SIZE = 4096
# Work sized to write this many times what the pipe holds: a reader that stalls is surely reached.
FILL_TIMES = 3
ACCESS_LINE_BYTES = 200  # an access line of POST /chat is over this (about 500)
FILLER_LINE_BYTES = 50  # LINE with its shortest padding (20 bytes) is over this
ANSWER_BOUND = 5.0  # a request or /livez of a gateway that is not frozen answers in milliseconds
# Nothing is live, so the drain ends at once; then each process gives its queued lines up to
# EXIT_FLUSH_SECONDS (2 s) before it exits without them, a supervisor after its workers.
EXIT_BOUND = 15.0
STARTUP_BOUND = 30.0
BURST = 500
LINE = '{"event":"filler","n":%d,"padding":"%s"}\n'


def pipe() -> tuple[int, int, int]:
    """A pipe as small as the kernel allows: its read end, its write end, and the bytes it holds."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    return read_end, write_end, fcntl.fcntl(write_end, fcntl.F_GETPIPE_SZ)


def filling_requests(capacity: int) -> int:
    """How many requests log FILL_TIMES what a pipe of `capacity` bytes holds (one access line each)."""
    return FILL_TIMES * capacity // ACCESS_LINE_BYTES + 1


def filler_lines(capacity: int, padding: str) -> list[str]:
    """Numbered filler lines, FILL_TIMES what a pipe of `capacity` bytes holds, all under the queue's bound."""
    lines: list[str] = []
    size = 0
    while size < FILL_TIMES * capacity:
        lines.append(LINE % (len(lines), padding))
        size += len(lines[-1])
    assert len(lines) < MAX_PENDING_LINES  # queued whole: none dropped
    return lines


def read_lines_until(fd: int, done: int, needle: bytes, timeout: float = STARTUP_BOUND) -> bytes:
    """Read `fd` until `done` lines containing `needle` came (then stop reading); what was read."""
    read = b""
    deadline = time.monotonic() + timeout
    while read.count(needle) < done:
        left = deadline - time.monotonic()
        assert left > 0, f"no {done} lines with {needle!r} within {timeout} s:\n{read.decode(errors='replace')}"
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 65536)
            assert chunk, f"the process exited before {done} lines with {needle!r}:\n{read.decode(errors='replace')}"
            read += chunk
    return read


def unread_bytes(fd: int) -> int:
    return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"), sys.byteorder)


@contextlib.contextmanager
def gateway_with_a_stalled_reader(
    simulator: Simulator, workers: int
) -> Iterator[tuple[subprocess.Popen[bytes], str, int, int]]:
    """`run.py` with stdout and stderr on a one-page pipe, read until it listens, then never; its URL,
    the read end, and how many requests log FILL_TIMES what the pipe holds."""
    port = free_port()
    env = clean_env(
        {"AI_INTEGRATIONS_OPENAI_API_KEY": "sk-test-key", "AI_INTEGRATIONS_OPENAI_BASE_URL": simulator.base_url}
    )
    argv = [sys.executable, "run.py", "--host", "127.0.0.1", "--port", str(port), "--config", str(TEST_CONFIG)]
    if workers > 1:
        argv += ["--workers", str(workers)]
    read_end, write_end, capacity = pipe()
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=write_end, stderr=write_end)
    os.close(write_end)
    # Its workers, taken while it lives: killed, it leaves them to leave on their own.
    started: list[psutil.Process] = []
    try:
        read_lines_until(read_end, workers, b'"sluice_listening"')
        started = children(process)
        yield process, f"http://127.0.0.1:{port}", read_end, filling_requests(capacity)
    finally:
        started += children(process)  # a replacement since, or those of a start that failed
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(read_end)  # a worker's write waiting on the stalled pipe fails now: none is held up
        end_workers(started)


def chat(url: str, request_id: str = "") -> None:
    request = urllib.request.Request(
        url + "/chat",
        data=json.dumps({"message": "hi\n#sim tokens=2"}).encode(),
        headers={"Content-Type": "application/json", "X-Request-ID": request_id or "chat"},
    )
    with urllib.request.urlopen(request, timeout=ANSWER_BOUND) as answer:
        assert answer.status == 200


def fill_the_pipe(url: str, read_end: int, requests: int) -> None:
    """Send `requests` requests, whose access lines overflow the pipe; stop at the first that gets no answer."""
    with contextlib.suppress(TimeoutError, urllib.error.URLError):
        for index in range(requests):
            chat(url, f"fill-{index}")
    assert unread_bytes(read_end) > 0  # the reader stalled with lines waiting


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
def test_a_stalled_log_reader_holds_up_no_request_nor_livez(simulator: Simulator, workers: int) -> None:
    with gateway_with_a_stalled_reader(simulator, workers) as (_, url, read_end, requests):
        for index in range(requests):
            chat(url, f"fill-{index}")  # raises past ANSWER_BOUND
        assert unread_bytes(read_end) > 0
        with urllib.request.urlopen(url + "/livez", timeout=ANSWER_BOUND) as answer:
            assert answer.status == 200
        chat(url, "after-the-pipe-filled")


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
def test_sigterm_ends_a_gateway_whose_log_reader_stalled_within_a_bound(simulator: Simulator, workers: int) -> None:
    with gateway_with_a_stalled_reader(simulator, workers) as (process, url, read_end, requests):
        fill_the_pipe(url, read_end, requests)
        process.terminate()
        assert process.wait(EXIT_BOUND) == 0


async def test_with_a_reader_every_access_line_of_a_burst_arrives_once_whole_and_in_order() -> None:
    # Two workers sharing the pipe, so lines of two processes could interleave; GET /v1/models
    # needs no upstream: the burst is the log's, not the simulator's.
    port = free_port()
    argv = [sys.executable, "run.py", "--host", "127.0.0.1", "--port", str(port), "--config", str(TEST_CONFIG)]
    process = ManagedProcess([*argv, "--workers", "2"], clean_env()).start()
    url = f"http://127.0.0.1:{port}"
    # Its workers, taken while it lives: stopped, it stops them, unless that is what broke.
    started: list[psutil.Process] = []
    try:
        process.wait_for_line(counting('"sluice_listening"', 2), STARTUP_BOUND)
        started = children(process.process)
        ids = [f"burst-{index:04d}" for index in range(BURST)]
        gate = asyncio.Semaphore(50)

        async def get(session: aiohttp.ClientSession, request_id: str) -> None:
            async with gate, session.get(url + "/v1/models", headers={"X-Request-ID": request_id}) as answer:
                assert answer.status == 200

        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(get(session, request_id) for request_id in ids))
        # Every request answered; its line may still be on its way.
        process.wait_for_line(counting('"burst-', BURST), ANSWER_BOUND * 4)
    finally:
        started += children(process.process)
        process.stop()
        end_workers(started)
        process.stop()  # its output's end, which a worker left held open
    for line in process.lines:
        json.loads(line)  # no line torn, nor two merged
    lines = burst_lines(process)
    assert sorted(line["request_id"] for line in lines) == ids
    pids = {line["pid"] for line in lines}
    assert len(pids) == 2  # both workers wrote to the pipe at once
    for pid in pids:
        times = [line["timestamp"] for line in lines if line["pid"] == pid]
        assert times == sorted(times)  # each process's lines in the order it logged them


def counting(needle: str, count: int) -> Callable[[str], bool]:
    """For `wait_for_line`, which shows each line once: true from the `count`th line with `needle` on."""
    seen = 0

    def matches(line: str) -> bool:
        nonlocal seen
        seen += needle in line
        return seen >= count

    return matches


def burst_lines(process: ManagedProcess) -> list[dict[str, Any]]:
    return [line for line in process.events("request_finished") if str(line.get("request_id", "")).startswith("burst-")]


@dataclass
class PipedLog:
    """A `LossyStream` writing into a one-page pipe, its writer thread, and the pipe's read end."""

    lossy: LossyStream
    writer: threading.Thread
    read_end: int
    capacity: int  # the bytes the pipe holds
    # Threads of the test that read `read_end`: the end stays open while one does.
    readers: list[threading.Thread] = field(default_factory=list)
    reading: bool = True  # `read_end` is open

    def close_reader(self) -> None:
        """Close the read end: a write waiting on the full pipe fails, and every one after."""
        if self.reading:
            self.reading = False
            os.close(self.read_end)


@contextlib.contextmanager
def piped_log() -> Iterator[PipedLog]:
    """A `LossyStream` on a one-page pipe; at the end its writer is ended (`LossyStream.close`) and the
    pipe closed, whatever the test left queued or unread."""
    read_end, write_end, capacity = pipe()
    stdout = os.fdopen(write_end, "w")
    before = set(threading.enumerate())
    lossy = LossyStream(stdout)
    (writer,) = [thread for thread in threading.enumerate() if thread not in before]
    log = PipedLog(lossy, writer, read_end, capacity)
    try:
        yield log
    finally:
        if not any(reader.is_alive() for reader in log.readers):
            log.close_reader()  # no one reads: a write waiting on the full pipe would wait for good
        # The writer writes to the descriptor's number: closed under a writer still there, the
        # number may be another file's by its next write.
        if lossy.close(ANSWER_BOUND):
            stdout.close()  # the readers' end of file
        for reader in log.readers:
            reader.join(ANSWER_BOUND)
        log.close_reader()


def test_past_the_bound_a_stalled_readers_lines_are_dropped_and_counted() -> None:
    heard: list[None] = []
    with piped_log() as log:
        # The most lines the writer takes off the queue: a pipe's worth, and one write's worth.
        taken = (log.capacity + select.PIPE_BUF) // FILLER_LINE_BYTES
        lossy = log.lossy
        lossy.on_drop = lambda: heard.append(None)
        extra = max(2000, 2 * taken)  # far more than the writer can take: some are dropped
        started = time.monotonic()
        accepted = sum(1 for index in range(MAX_PENDING_LINES + extra) if lossy.write(LINE % (index, "x" * 20)))
        elapsed = time.monotonic() - started
        log.close_reader()  # the writer's blocked write fails: those lines are dropped too
        assert lossy.wait_written(ANSWER_BOUND)
    assert MAX_PENDING_LINES <= accepted <= MAX_PENDING_LINES + taken
    assert lossy.dropped >= MAX_PENDING_LINES + extra - accepted
    assert len(heard) == lossy.dropped
    assert elapsed < ANSWER_BOUND


def test_waiting_for_the_queued_lines_ends_once_a_reader_took_them_all_in_order() -> None:
    with piped_log() as log:
        lines = filler_lines(log.capacity, "y" * 40)
        lossy = log.lossy
        for line in lines:
            lossy.write(line)
        assert not lossy.wait_written(0.2)  # the pipe holds a fraction of them: nobody read
        received = bytearray()
        reader = threading.Thread(target=lambda: received.extend(read_all(log.read_end, len(lines))), daemon=True)
        log.readers.append(reader)
        reader.start()
        assert lossy.wait_written(ANSWER_BOUND)
        reader.join(ANSWER_BOUND)
    assert received.decode() == "".join(lines)
    assert lossy.dropped == 0


def read_all(fd: int, count: int) -> bytes:
    data = b""
    while data.count(b"\n") < count:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data


# A process that queues lines into a full pipe, says so on stderr, and returns from its main; at
# exit it says when it starts waiting for the queued lines, so the test reads only from then on: a
# reader from the start could take them all before the exit, and the test would pass without a wait.
# It waits up to 60 s, not EXIT_FLUSH_SECONDS: what is proven is that the exit waits for the lines.
# It logs as many lines as its argument says, each over EXIT_LINE_BYTES.
EXIT_LINE_BYTES = 100
QUEUE_THEN_EXIT = """
import sys
from server.logs import LossyStream, configure_logging
import structlog
wait_written = LossyStream.wait_written
def announced(self, timeout):
    print("waiting", file=sys.stderr, flush=True)
    return wait_written(self, 60)  # the 2 s at exit, far away: the test's reading races no deadline
LossyStream.wait_written = announced
configure_logging("json", "info")
log = structlog.get_logger("test")
for index in range(int(sys.argv[1])):
    log.info("filler", n=index, padding="z" * 100)
print("queued", file=sys.stderr, flush=True)
"""


def test_at_exit_the_lines_still_queued_reach_a_reader_that_reads() -> None:
    read_end, write_end, capacity = pipe()
    count = FILL_TIMES * capacity // EXIT_LINE_BYTES + 1  # FILL_TIMES what the pipe holds
    assert count < MAX_PENDING_LINES  # queued whole: none dropped
    child = subprocess.Popen(
        [sys.executable, "-c", QUEUE_THEN_EXIT, str(count)],
        cwd=ROOT,
        env=clean_env(),
        stdout=write_end,
        stderr=subprocess.PIPE,
    )
    os.close(write_end)
    try:
        assert child.stderr is not None
        assert child.stderr.readline() == b"queued\n"  # its main is done: it exits next
        assert child.stderr.readline() == b"waiting\n"  # at exit, for the lines the full pipe holds back
        output = read_all(read_end, count)
        assert child.wait(EXIT_BOUND) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(read_end)
        if child.stderr is not None:
            child.stderr.close()
    events = [json.loads(line) for line in output.splitlines()]
    assert [event["n"] for event in events] == list(range(count))


def test_closing_a_log_stream_writes_the_lines_queued_and_ends_its_writer() -> None:
    with piped_log() as log:
        lines = [LINE % (index, "z") for index in range(3)]  # far less than the pipe holds
        for line in lines:
            log.lossy.write(line)
        assert log.lossy.close(ANSWER_BOUND)
        assert not log.writer.is_alive()
        assert read_all(log.read_end, len(lines)).decode() == "".join(lines)


def test_a_line_written_after_close_is_dropped_and_counted() -> None:
    with piped_log() as log:
        assert log.lossy.close(ANSWER_BOUND)
        assert log.lossy.write(LINE % (0, "late")) == 0
        assert log.lossy.dropped == 1


def test_closing_again_waits_again_for_a_writer_held_by_a_stalled_reader() -> None:
    with piped_log() as log:
        for line in filler_lines(log.capacity, "w" * 40):  # more than the pipe holds: nobody reads
            log.lossy.write(line)
        assert not log.lossy.close(0.2)
        assert not log.lossy.close(0.2)  # the writer is still held: not ended
        log.close_reader()  # its write fails now, and so does every one after
        assert log.lossy.close(ANSWER_BOUND)


def test_the_log_writer_thread_takes_no_signal() -> None:
    # A signal the writer took would be lost to the thread waiting for it: the --workers
    # supervisor takes SIGTERM and SIGCHLD by `sigtimedwait`, which sees only those left pending.
    with piped_log() as log:
        status = Path(f"/proc/self/task/{log.writer.native_id}/status").read_text()
    blocked = int(next(line for line in status.splitlines() if line.startswith("SigBlk:")).split()[1], 16)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1):
        assert blocked & (1 << (signum - 1)), signum.name


def test_a_line_a_closed_in_memory_stream_refuses_is_dropped_and_counted_not_raised() -> None:
    # A stream with no descriptor is written at once, on the caller: its refusal must not reach it.
    stream = io.StringIO()
    lossy = LossyStream(stream)
    heard: list[None] = []
    lossy.on_drop = lambda: heard.append(None)
    stream.close()
    assert lossy.write('{"event":"request_finished"}\n') == 0
    assert (lossy.dropped, len(heard)) == (1, 1)
