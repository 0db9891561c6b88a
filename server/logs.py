"""Configure structlog once per process: JSON lines off a terminal, readable lines on one.

aiohttp's and asyncio's own loggers go through the same renderer, so every line of a process
has one format. Message content and keys are never passed to a logger. A console line shows
control characters as escapes (`\\x1b`): a value a client chose (a request path) must not reach
an operator's terminal as its commands, nor forge a line; JSON escapes them already.

No line waits for stdout's reader (`LossyStream`). A reader that stalls (a slow log driver, a
journald that stopped reading) fills the pipe, and a blocking write then froze the event loop:
every request, `/livez` and the SIGTERM drain with it. So a line is queued (a C `SimpleQueue`, ~1 us
on the caller) and one writer thread per process does the blocking writes, in order, each line
whole; past `MAX_PENDING_LINES` waiting, a line is dropped and counted, like one refused by a
reader gone. At exit the lines still queued (the drain's, the last ones) get `EXIT_FLUSH_SECONDS`
to be written, then the process exits without them. Not non-blocking writes instead: O_NONBLOCK
belongs to the open file, which the workers, a `| tee` and a terminal's shell share with this
process, and none of them expects EAGAIN.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import re
import select
import signal
import ssl
import sys
import threading
from collections.abc import Callable
from typing import Literal, TextIO, cast

import orjson
import structlog
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

LogFormat = Literal["auto", "json", "console"]
# What an operator reads first on a console line, after time, level and event.
LEADING_FIELDS = ("method", "path", "status", "duration_ms")
# Lines waiting for stdout before the next is dropped: ~2 MB of access lines, 40 if each were the
# longest request line aiohttp reads; far more than a pipe holds (64 KiB), for a reader's pauses.
MAX_PENDING_LINES = 4096
# At exit, how long the queued lines may take to be written: long for a reader that reads, short
# beside a drain, and a reader that stalled must not keep the process from exiting.
EXIT_FLUSH_SECONDS = 2.0
# Lines written together up to this size: a pipe takes a write of at most PIPE_BUF bytes in one
# piece, so the lines of workers sharing it never interleave, and one write serves many lines.
_BATCH_BYTES = select.PIPE_BUF

_protocol_log = structlog.get_logger("sluice.protocol")

# C0 controls, DEL and C1 controls: ESC and CSI start a terminal's commands, CR and LF forge lines.
# Unicode's bidirectional controls and line separators too: a path with U+202E shows the rest of
# the line reversed (a forged status, a forged key name), and U+2028 breaks it in some viewers.
_BIDI = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x2028, 0x2029)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_BIDI_CONTROL = re.compile(r"[\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_BIDI_ESCAPES = {code: f"\\u{code:04x}" for code in _BIDI}
_ESCAPES = (
    {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))}
    | _BIDI_ESCAPES
    | {ord("\t"): "\\t", ord("\n"): "\\n", ord("\r"): "\\r"}
)
# A traceback's (or stack's) line breaks are its layout, printed below the line: kept.
_MULTILINE_FIELDS = frozenset({"exception", "stack"})
_MULTILINE_ESCAPES = {code: text for code, text in _ESCAPES.items() if code != ord("\n")}


def configure_logging(fmt: LogFormat = "auto", level: str = "info", stream: TextIO | None = None) -> LossyStream:
    """Route structlog and the standard library's logging to `stream` (stdout) in `fmt` at `level`.

    Returns the stream the lines go through, which counts those it could not write.
    """
    lossy = LossyStream(stream if stream is not None else sys.stdout)
    out = cast(TextIO, lossy)
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_pid,
    ]
    # The rendering steps, after the tracebacks are formatted (as text, which the console escapes too).
    rendering: list[structlog.types.Processor]
    if use_json:
        rendering = [structlog.processors.JSONRenderer(serializer=_dumps)]
    else:
        shared.append(_lead_with_request_fields)
        # Not sorted: the order is the one _lead_with_request_fields gives.
        rendering = [_escape_controls, structlog.dev.ConsoleRenderer(colors=out.isatty(), sort_keys=False)]
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, *rendering],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        # One write per line (message and newline together): workers share stdout, and print()
        # writes the newline separately, so two workers' lines could merge into one.
        logger_factory=structlog.WriteLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                *rendering,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in server_log.filters):
        server_log.addFilter(MalformedRequestFilter())
    return lossy


class LossyStream:
    """The log's stream: lines are queued for a writer thread, and dropped, never raised or waited for.

    A log line must never fail or hold up what it describes. When stdout's reader is gone (a log
    shipper that died, a `| tee` killed), every write raises BrokenPipeError, which turned every
    request into a 500 and the SIGTERM drain into a task that died before it began. When the
    reader stalls, a write blocks: on the event loop, that froze the whole process. Here the writes
    happen in a thread of their own (the module's docstring says why a thread); the caller only
    queues the line. `dropped` counts the lines lost (refused, or past `MAX_PENDING_LINES`), and
    `on_drop` (the gateway's metric, while it runs) hears of each, from either thread: with no
    log, the metric is how an operator finds out.

    A stream with no file descriptor (in memory, which cannot block) is written at once instead.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.dropped = 0
        self.on_drop: Callable[[], None] | None = None
        self._drop_lock = threading.Lock()  # `dropped += n` from two threads would lose counts
        self._fd = _descriptor(stream)
        # Lines, marks to set once the lines before them are written, and None: the writer's end (`close`).
        self._pending: queue.SimpleQueue[str | threading.Event | None] | None = None
        self._writer: threading.Thread | None = None
        self._closed = False  # `close` ended the writer: a line written now is dropped
        if self._fd is None:
            return
        # What the stream buffered before goes out first: from here on, lines bypass its buffer.
        self.flush()
        self._encoding = getattr(stream, "encoding", None) or "utf-8"
        self._pending = queue.SimpleQueue()
        # A daemon: a thread blocked on a stalled reader must not keep the process from exiting.
        writer = threading.Thread(
            target=self._write_pending, args=(self._pending, self._fd), name="sluice-log-writer", daemon=True
        )
        # Started with every signal blocked, which it keeps: a signal it took would be lost to the
        # threads that wait for it (the --workers supervisor's `sigtimedwait`, a worker's SIGHUP).
        held = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            writer.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        self._writer = writer
        atexit.register(self.wait_written, EXIT_FLUSH_SECONDS)

    def write(self, text: str) -> int:
        """Queue `text` (one line) for the writer; 0 (and one line more dropped) when too many wait."""
        pending = self._pending
        if pending is None:
            if self._closed:
                self._drop(1)  # closed: never a blocking write on the caller's thread
                return 0
            return self._write_now(text)
        # qsize, not a bounded Queue: SimpleQueue's put is C and takes no lock while the writer is busy.
        if pending.qsize() >= MAX_PENDING_LINES:
            self._drop(1)
            return 0
        pending.put(text)
        return len(text)

    def flush(self) -> None:
        """Flush what the stream holds, when it still can be (the writer thread writes unbuffered)."""
        if self._pending is None:
            with contextlib.suppress(OSError, ValueError):
                self._stream.flush()

    def wait_written(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the lines queued so far to be written (or dropped); whether they were."""
        pending = self._pending  # read once: `close` may end it meanwhile
        if pending is None:
            self.flush()
            return True
        written = threading.Event()
        pending.put(written)  # past the bound too: it is a mark, not a line
        return written.wait(timeout)

    def close(self, timeout: float) -> bool:
        """End the writer once the lines queued so far are written (or dropped); whether it has ended.

        The gateway's own stream lives as long as its process and is never closed; a stream made for
        a while (a test's) ends its thread here, and its exit no longer waits for it. Call it once
        nothing else writes: a line a racing `write` queues behind the end is never written. A line
        written after is dropped and counted; called again, `close` waits for the writer again. A
        stream with no file descriptor has no writer: it is flushed, and writes still go to it.
        """
        writer = self._writer
        if writer is None:
            self.flush()
            return True
        pending = self._pending
        if pending is not None:
            self._closed, self._pending = True, None
            atexit.unregister(self.wait_written)
            pending.put(None)
        writer.join(timeout)
        return not writer.is_alive()

    def isatty(self) -> bool:
        """Whether the stream is a terminal (never, once it is gone)."""
        try:
            return self._stream.isatty()
        except (OSError, ValueError):
            return False

    def _write_now(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (OSError, ValueError):  # ValueError: the stream was closed under us
            self._drop(1)
            return 0

    def _drop(self, lines: int) -> None:
        with self._drop_lock:
            self.dropped += lines
        on_drop = self.on_drop  # read once: the gateway's cleanup may unset it meanwhile
        if on_drop is not None:
            for _ in range(lines):
                on_drop()

    def _write_pending(self, pending: queue.SimpleQueue[str | threading.Event | None], fd: int) -> None:
        """The writer thread: the queued lines, in order, in as few writes of whole lines as can be."""
        carried: str | threading.Event | None = None
        while True:
            item = carried if carried is not None else pending.get()
            carried = None
            batch: list[bytes] = []
            size = 0
            while isinstance(item, str):
                line = item.encode(self._encoding, "backslashreplace")
                if batch and size + len(line) > _BATCH_BYTES:
                    carried = item  # the next write's first line
                    break
                batch.append(line)
                size += len(line)
                try:
                    item = pending.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._write_batch(fd, b"".join(batch), len(batch))
            if item is None:
                return  # closed: every line queued before is written
            if isinstance(item, threading.Event):
                item.set()  # every line queued before the mark is written

    def _write_batch(self, fd: int, data: bytes, lines: int) -> None:
        view = memoryview(data)
        try:
            while view:
                try:
                    view = view[os.write(fd, view) :]
                except BlockingIOError:  # another process sharing the file set O_NONBLOCK on it
                    select.select((), (fd,), ())
        except OSError:
            self._drop(lines)


def _descriptor(stream: TextIO) -> int | None:
    """`stream`'s file descriptor; None for one in memory (or already closed)."""
    try:
        return stream.fileno()
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        return None


class MalformedRequestFilter(logging.Filter):
    """aiohttp's line for a request it could not parse, without what the client sent.

    aiohttp logs it at error level with a traceback whose message quotes the offending bytes: a
    request line with its query (a browser token, a prompt) or a header line (a gateway key). In
    its place: one `malformed_http_request` event with the status, the error's class and the client.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        client = record.args[0] if isinstance(record.args, tuple) and record.args else None
        _protocol_log.info("malformed_http_request", status=exc.code, error=type(exc).__name__, client=client)
        return False


def _add_pid(_: object, __: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
    # Which process wrote the line: with --workers, several share one stdout.
    event.setdefault("pid", os.getpid())
    return event


def _lead_with_request_fields(_: object, __: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
    """Put method, path, status and duration first, so the console lines of requests line up."""
    leading = {name: event.pop(name) for name in LEADING_FIELDS if name in event}
    return {**leading, **event}


def _escape_controls(_: object, __: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
    """Each string value with its control characters as escapes (`\\x1b`), for the console renderer.

    The renderer writes a string as it is (it quotes only one with spaces, `=` or quotes); any other
    value it writes as its repr, which escapes them already.
    """
    for key, value in event.items():
        if isinstance(value, str) and _CONTROL.search(value) is not None:
            event[key] = value.translate(_MULTILINE_ESCAPES if key in _MULTILINE_FIELDS else _ESCAPES)
    return event


def connection_error_fields(exc: BaseException) -> dict[str, object]:
    """Host, port, errno and reason of a failed connection, found anywhere in `exc`'s causes.

    A TLS failure has its library's reason (`self-signed certificate`) and no errno.
    """
    fields: dict[str, object] = {"error": type(exc).__name__}
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        host, port = getattr(current, "host", None), getattr(current, "port", None)
        if isinstance(host, str) and "host" not in fields:
            fields["host"] = host
            fields["port"] = port
        os_error = getattr(current, "os_error", None) or (current if isinstance(current, OSError) else None)
        if isinstance(os_error, ssl.SSLError) and "reason" not in fields:
            # Its errno is the TLS library's error kind (1: SSL_ERROR_SSL), no system errno: named by
            # os.strerror it read "Operation not permitted". Its own words say what went wrong.
            verify_message = getattr(os_error, "verify_message", None)
            fields["reason"] = verify_message or os_error.reason or str(os_error)
        elif isinstance(os_error, OSError) and os_error.errno is not None and "reason" not in fields:
            code = os_error.errno
            fields["errno"] = code
            fields["reason"] = os.strerror(code) if code > 0 else (os_error.strerror or str(os_error))
        current = current.__cause__ or current.__context__
    return fields


def loggable_url(url: str) -> str:
    """`url` without user, password or query: a base URL can carry credentials."""
    parsed = URL(url)
    if not parsed.is_absolute():
        return "(not a URL)"
    return str(parsed.with_user(None).with_query(None).with_fragment(None))


def _dumps(value: object, **_: object) -> str:
    text = orjson.dumps(value, default=str).decode()
    # JSON escapes control characters, not the bidirectional ones: as `\u202e` the line is the
    # same JSON, and a terminal showing it (`docker logs`) reorders nothing.
    # orjson writes non-ASCII as it is: an ASCII line (most) has none, found in C at once.
    if text.isascii() or _BIDI_CONTROL.search(text) is None:
        return text
    return text.translate(_BIDI_ESCAPES)
