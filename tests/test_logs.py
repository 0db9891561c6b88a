"""Log lines: one JSON object per line, each written whole, so workers sharing stdout never merge lines."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from server.logs import configure_logging


class RecordingStream(io.StringIO):
    """Notes every write call, the way a pipe shared by several processes would see them."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)

    def isatty(self) -> bool:
        return False


@pytest.fixture
def stdout() -> Iterator[RecordingStream]:
    stream = RecordingStream()
    yield stream
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def test_each_event_is_one_write_of_one_json_line(stdout: RecordingStream) -> None:
    configure_logging("auto", "info", stdout)
    structlog.get_logger("test").info("request_finished", status=200)
    (line,) = [w for w in stdout.writes if w]
    assert line.endswith("\n")
    assert line.count("\n") == 1
    assert json.loads(line)["event"] == "request_finished"


def test_standard_library_records_are_one_json_line_too(stdout: RecordingStream) -> None:
    configure_logging("json", "info", stdout)
    logging.getLogger("aiohttp.server").error("Error handling request")
    (line,) = [w for w in stdout.writes if w]
    assert json.loads(line)["logger"] == "aiohttp.server"


def test_events_below_the_configured_level_are_not_written(stdout: RecordingStream) -> None:
    configure_logging("json", "warning", stdout)
    structlog.get_logger("test").info("request_finished")
    assert not [w for w in stdout.writes if w]
