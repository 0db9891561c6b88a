"""Configure structlog once per process: JSON lines off a terminal, readable lines on one.

aiohttp's and asyncio's own loggers go through the same renderer, so every line of a process
has one format. Message content and keys are never passed to a logger.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

import orjson
import structlog

LogFormat = Literal["auto", "json", "console"]


def configure_logging(fmt: LogFormat = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Route structlog and the standard library's logging to `stream` (stdout) in `fmt` at `level`."""
    out = stream if stream is not None else sys.stdout
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor
    if use_json:
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
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
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)


def _dumps(value: object, **_: object) -> str:
    return orjson.dumps(value, default=str).decode()
