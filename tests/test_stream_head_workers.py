"""HEAD on a browser stream through the worker that does not own it (`--workers`): forwarded, it
answers what the owner's GET would, at once and without a body.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.support.client import new_request_id
from tests.support.processes import Simulator
from tests.test_worker_proxy import Workers, start_on, start_workers

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def two_workers(simulator: Simulator) -> Iterator[Workers]:
    running = start_workers(simulator)
    yield running
    running.supervisor.stop()


async def test_head_through_the_worker_that_does_not_own_a_live_stream_answers_like_its_get(
    two_workers: Workers,
) -> None:
    path = await start_on(two_workers, 0, "x\n#sim fault=hang_first", new_request_id("peer-head"))
    async with two_workers.session(1) as http:
        # Bounded: were the HEAD served as the GET, it would not end while the stream runs.
        async with asyncio.timeout(10), http.head(path) as head:
            body = await head.read()
        async with http.get(path) as get:
            assert get.status == 200
            content_type = get.headers["Content-Type"]

    assert head.status == 200
    assert head.headers["Content-Type"] == content_type == "text/event-stream"
    assert body == b""
