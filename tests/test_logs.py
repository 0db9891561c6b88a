"""Log lines: one JSON object per line, each written whole, so workers sharing stdout never merge lines;
on the console, no control character a client sent reaches the operator's terminal.
"""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Iterator

import aiohttp
import pytest
import structlog
from yarl import URL

from server.logs import configure_logging
from tests.support.processes import ManagedProcess, clean_env, free_port

# A path that, written raw to a terminal, erases the line above and retitles the window (ESC, BEL),
# then a C1 CSI and DEL. No space, `=` or quote: the renderer would quote such a value, escaped.
HOSTILE = "/x\x1b[2K\x1b[1A\x1b]0;pwned\x07\u009b2J\x7f"
CONTROLS = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")  # any but the line's own end


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


def test_a_console_line_shows_the_control_characters_of_a_value_as_escapes(stdout: RecordingStream) -> None:
    configure_logging("console", "info", stdout)
    structlog.get_logger("test").info("request_finished", path=HOSTILE, status=404)
    (line,) = [w for w in stdout.writes if w]
    assert CONTROLS.search(line) is None
    assert "path=/x\\x1b[2K\\x1b[1A\\x1b]0;pwned\\x07\\x9b2J\\x7f " in line


# Right-to-left override, an isolate, a line separator: shown raw, the rest of the line reads reversed.
BIDI = "/x\u202e002-sutats\u2066\u2028\u061c"
BIDI_CHARACTERS = re.compile("[\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def test_a_console_line_shows_the_bidirectional_controls_of_a_value_as_escapes(stdout: RecordingStream) -> None:
    configure_logging("console", "info", stdout)
    structlog.get_logger("test").info("request_finished", path=BIDI, status=404)
    (line,) = [w for w in stdout.writes if w]
    assert BIDI_CHARACTERS.search(line) is None
    assert "path=/x\\u202e002-sutats\\u2066\\u2028\\u061c " in line


def test_a_json_line_writes_the_bidirectional_controls_as_json_escapes(stdout: RecordingStream) -> None:
    configure_logging("json", "info", stdout)
    structlog.get_logger("test").info("request_finished", path=BIDI, status=404)
    (line,) = [w for w in stdout.writes if w]
    assert BIDI_CHARACTERS.search(line) is None
    assert json.loads(line)["path"] == BIDI  # the same value, read back


def test_a_console_line_of_the_standard_library_shows_them_as_escapes_too(stdout: RecordingStream) -> None:
    configure_logging("console", "info", stdout)
    logging.getLogger("aiohttp.server").error("Error handling request to %s", HOSTILE)
    (line,) = [w for w in stdout.writes if w]
    assert CONTROLS.search(line) is None


def test_a_console_traceback_keeps_its_lines_and_escapes_the_rest(stdout: RecordingStream) -> None:
    configure_logging("console", "info", stdout)
    try:
        raise ValueError(HOSTILE)
    except ValueError:
        structlog.get_logger("test").exception("handler_failed")
    (text,) = [w for w in stdout.writes if w]
    assert CONTROLS.search(text) is None
    assert "Traceback (most recent call last):\n" in text  # laid out on lines of its own, as ever


async def test_a_console_gateway_writes_a_request_path_with_escapes_not_terminal_commands() -> None:
    """`python run.py` with SLUICE_LOGGING_FORMAT=console: a path the client chose reaches its access line escaped."""
    port = free_port()
    argv = [sys.executable, "run.py", "--host", "127.0.0.1", "--port", str(port)]
    process = ManagedProcess(argv, clean_env({"SLUICE_LOGGING_FORMAT": "console"})).start()
    try:
        process.wait_for_line(lambda text: "sluice_listening" in text)
        # Encoded by hand: the client sends these bytes as they are, and the gateway decodes them.
        path = "/x%1b%5b2K%1b%5b1A%1b%5d0;pwned%07%C2%9B2J%7f"
        async with aiohttp.ClientSession() as http:
            async with http.get(URL(f"http://127.0.0.1:{port}{path}", encoded=True)) as response:
                assert response.status == 404
        line = process.wait_for_line(lambda text: "request_finished" in text and "pwned" in text)
    finally:
        process.stop()
    assert CONTROLS.search(line) is None
    assert "x1b]0;pwned" in line
