"""The access log's client behind a trusted proxy when X-Forwarded-For comes on several header lines.

Repeated lines are one comma-joined list, in order (RFC 9110 §5.3): a proxy that appends its own
line (HAProxy's `option forwardfor`) leaves the client's invented line in front of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict
from structlog.testing import capture_logs
from structlog.typing import EventDict

from server.app import create_app
from tests.conftest import make_settings

Client = TestClient[web.Request, web.Application]
AiohttpClient = Callable[..., Any]


@pytest.fixture
def logs() -> Iterator[list[EventDict]]:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as events:
        yield events


@pytest.fixture
async def behind_proxy(aiohttp_client: AiohttpClient) -> Client:
    """The gateway with the test client's own address (127.0.0.1) as a trusted proxy."""
    client: Client = await aiohttp_client(create_app(make_settings(server={"trusted_proxies": ["127.0.0.1"]})))
    return client


def logged_client(logs: list[EventDict]) -> object:
    (event,) = [e for e in logs if e["event"] == "request_finished"]
    return event["client"]


async def test_the_client_is_read_from_the_last_of_several_forwarded_for_lines(
    behind_proxy: Client, logs: list[EventDict]
) -> None:
    # The client wrote the first line; the trusted proxy appended the second, naming the peer it saw.
    lines = CIMultiDict([("X-Forwarded-For", "198.51.100.1"), ("X-Forwarded-For", "203.0.113.7")])
    await behind_proxy.get("/nothere", headers=lines)

    assert logged_client(logs) == "203.0.113.7"


async def test_forwarded_for_lines_are_walked_as_one_list_past_trusted_hops(
    behind_proxy: Client, logs: list[EventDict]
) -> None:
    # The last line is a trusted hop's: the client is the last untrusted address, on the line before.
    lines = CIMultiDict(
        [("X-Forwarded-For", "198.51.100.1"), ("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-For", "127.0.0.1")]
    )
    await behind_proxy.get("/nothere", headers=lines)

    assert logged_client(logs) == "203.0.113.7"


async def test_a_single_forwarded_for_line_still_names_the_client(behind_proxy: Client, logs: list[EventDict]) -> None:
    await behind_proxy.get("/nothere", headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.7"})

    assert logged_client(logs) == "203.0.113.7"
