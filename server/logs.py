"""Configure structlog once per process: JSON lines off a terminal, readable lines on one.

aiohttp's and asyncio's own loggers go through the same renderer, so every line of a process
has one format. Message content and keys are never passed to a logger. A console line shows
control characters as escapes (`\\x1b`): a value a client chose (a request path) must not reach
an operator's terminal as its commands, nor forge a line; JSON escapes them already.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import ssl
import sys
from collections.abc import Callable
from typing import Literal, TextIO, cast

import orjson
import structlog
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

LogFormat = Literal["auto", "json", "console"]
# What an operator reads first on a console line, after time, level and event.
LEADING_FIELDS = ("method", "path", "status", "duration_ms")

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
    """The log's stream, whose lines are dropped, not raised, once it cannot be written.

    A log line must never fail what it describes: when stdout's reader is gone (a log shipper
    that died, a `| tee` killed), every write raises BrokenPipeError, which turned every request
    into a 500 and the SIGTERM drain into a task that died before it began, leaving the process
    answering `ready` until killed. `dropped` counts the lines lost, and `on_drop` (the gateway's
    metric, while it runs) hears of each: with no log, the metric is how an operator finds out.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.dropped = 0
        self.on_drop: Callable[[], None] | None = None

    def write(self, text: str) -> int:
        """Write `text`; 0 (and one line more dropped) when the stream refuses it."""
        try:
            return self._stream.write(text)
        except (OSError, ValueError):  # ValueError: the stream was closed under us
            self.dropped += 1
            if self.on_drop is not None:
                self.on_drop()
            return 0

    def flush(self) -> None:
        """Flush what the stream holds, when it still can be."""
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()

    def isatty(self) -> bool:
        """Whether the stream is a terminal (never, once it is gone)."""
        try:
            return self._stream.isatty()
        except (OSError, ValueError):
            return False


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
