"""`python run.py --workers 2`: a Last-Event-ID that is not UTF-8 gets the owner's answer from every worker.

aiohttp reads such header bytes as lone surrogates, and its client drops them when it writes a
header: a worker that forwarded the request as it came would hand the owner an empty Last-Event-ID,
and the stream from its start. Each worker is reached alone over its Unix socket (see
tests/test_worker_proxy.py), with the header's raw bytes written by hand.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from tests.support.client import new_request_id
from tests.support.processes import Simulator
from tests.test_worker_proxy import Workers, start_on, start_workers

pytestmark = pytest.mark.timeout(60)

ANSWER_SECONDS = 30.0


@pytest.fixture(scope="module")
def workers(simulator: Simulator) -> Iterator[Workers]:
    running = start_workers(simulator)
    yield running
    running.supervisor.stop()


async def raw_get(workers: Workers, index: int, path: str, last_event_id: bytes) -> tuple[int, dict[str, object]]:
    """GET `path` from worker `index`, `last_event_id` the header's bytes; the status and JSON body ({} if none)."""
    reader, writer = await asyncio.open_unix_connection(str(workers.peer_dir / f"worker-{index}.sock"))
    try:
        request = f"GET {path} HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n".encode()
        writer.write(request + b"Last-Event-ID: " + last_event_id + b"\r\n\r\n")
        async with asyncio.timeout(ANSWER_SECONDS):
            answer = await reader.read()
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    json_body = b"content-type: application/json" in head.lower()
    return status, json.loads(body) if json_body else {}


async def test_a_last_event_id_that_is_not_utf8_gets_the_owners_400_from_either_worker(workers: Workers) -> None:
    path = await start_on(workers, 0, "bytes\n#sim tokens=3", new_request_id("non-utf8-resume"))
    answers = [await raw_get(workers, index, path, b"\xff\xfe") for index in (0, 1)]
    owner, other = ((status, body.get("error")) for status, body in answers)
    assert owner == other
    status, error = owner
    assert status == 400
    assert isinstance(error, dict)
    assert (error["code"], error["param"]) == ("invalid_request", "Last-Event-ID")
