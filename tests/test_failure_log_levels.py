"""A stream that failed on the upstream's side logs at warning, though its status was 200.

Once a stream started, its status is 200 whatever happens next: the line's level came from the
status alone, so a cut, an error event or a stall logged at info, and a log kept at `warning` lost
every one of them. Against `python run.py`, whose lines carry their level.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import pytest

from tests.support.client import ROUTES, new_request_id, open_unread_stream
from tests.support.processes import Gateway, Simulator, start_gateway

DIALECTS = ["native", "openai"]
SEND_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def send_timeout_gateway(simulator: Simulator) -> Iterator[Gateway]:
    """A gateway that cuts a client accepting nothing after a second."""
    with start_gateway(upstream=simulator, env={"SLUICE_STREAM_SEND_TIMEOUT": str(SEND_TIMEOUT)}) as gateway:
        yield gateway


async def stream_to_its_end(gateway: Gateway, dialect: str, message: str, request_id: str) -> None:
    path, make_body = ROUTES[dialect]
    async with (
        aiohttp.ClientSession() as http,
        http.post(gateway.url + path, json=make_body(message), headers={"X-Request-ID": request_id}) as response,
    ):
        assert response.status == 200
        await response.read()


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_stream_cut_after_it_started_logs_at_warning(gateway: Gateway, dialect: str) -> None:
    rid = new_request_id("cut-level")
    await stream_to_its_end(gateway, dialect, "x\n#sim tokens=6 fault=cut", rid)
    line = gateway.process.wait_for_event("request_finished", request_id=rid)
    assert (line["outcome"], line["level"]) == ("upstream_error", "warning")


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_stream_that_completed_logs_at_info(gateway: Gateway, dialect: str) -> None:
    rid = new_request_id("done-level")
    await stream_to_its_end(gateway, dialect, "x\n#sim tokens=6", rid)
    line = gateway.process.wait_for_event("request_finished", request_id=rid)
    assert (line["outcome"], line["level"]) == ("completed", "info")


async def test_a_browser_stream_cut_after_it_started_logs_at_warning(gateway: Gateway) -> None:
    rid = new_request_id("browser-cut-level")
    body = {"message": "x\n#sim tokens=6 fault=cut"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(gateway.url + "/chat/streams", json=body, headers={"X-Request-ID": rid}) as response,
    ):
        assert response.status == 201
    line = gateway.process.wait_for_event("browser_stream_finished", request_id=rid)
    assert (line["outcome"], line["level"]) == ("upstream_error", "warning")


async def test_a_stream_cut_for_a_client_that_reads_nothing_logs_at_info(send_timeout_gateway: Gateway) -> None:
    # The client's stall, not the upstream's failure: an operator's warnings are not for it.
    rid = new_request_id("send-timeout-level")
    path, make_body = ROUTES["openai"]
    with open_unread_stream(send_timeout_gateway.url, path, make_body("x\n#sim tokens=150000"), rid):
        line = await asyncio.to_thread(
            send_timeout_gateway.process.wait_for_event, "request_finished", 60, request_id=rid
        )
    assert (line["error_code"], line["outcome"], line["level"]) == ("send_timeout", "timeout", "info")
