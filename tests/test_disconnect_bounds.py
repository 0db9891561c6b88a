"""How soon the upstream is closed once the client has gone, against `python run.py` and the simulator.

Every deadline that could also close the upstream (first token, idle, total, send, heartbeat)
is set a minute or more away, so only the gateway noticing the client can close it in time.
The bound is measured on one clock: the test notes the moment it leaves, the simulator notes
the moment its side of the upstream connection closed (`closed_at`).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.support.client import ROUTES, new_request_id, open_unread_stream, sim_wait
from tests.support.processes import Gateway, Simulator, start_gateway
from tests.support.sse import carries_token, iter_events

BOUND = 0.5  # seconds from the client leaving to the upstream connection closed
CROWD = 50  # clients leaving together
FAR = {
    "SLUICE_UPSTREAM_FIRST_TOKEN_TIMEOUT": "60",
    "SLUICE_UPSTREAM_IDLE_TIMEOUT": "60",
    "SLUICE_UPSTREAM_TOTAL_TIMEOUT": "120",
    "SLUICE_STREAM_SEND_TIMEOUT": "60",
    "SLUICE_STREAM_HEARTBEAT_INTERVAL": "60",
}
SEND_TIMEOUT = 1.0
TOTAL_TIMEOUT = 1.0

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def patient_gateway(simulator: Simulator) -> Iterator[Gateway]:
    """A gateway whose deadlines are all far away."""
    gateway = start_gateway(upstream=simulator, env=FAR)
    yield gateway
    gateway.process.stop()


@pytest.fixture(scope="module")
def send_timeout_gateway(simulator: Simulator) -> Iterator[Gateway]:
    """A gateway whose only near deadline is the send timeout."""
    gateway = start_gateway(upstream=simulator, env={**FAR, "SLUICE_STREAM_SEND_TIMEOUT": str(SEND_TIMEOUT)})
    yield gateway
    gateway.process.stop()


@pytest.fixture(scope="module")
def total_timeout_gateway(simulator: Simulator) -> Iterator[Gateway]:
    """A gateway whose only near deadline is the stream's total time."""
    with start_gateway(upstream=simulator, env={**FAR, "SLUICE_UPSTREAM_TOTAL_TIMEOUT": str(TOTAL_TIMEOUT)}) as gateway:
        yield gateway


def post(http: aiohttp.ClientSession, gateway: Gateway, dialect: str, message: str, request_id: str) -> Any:
    path, make_body = ROUTES[dialect]
    return http.post(gateway.url + path, json=make_body(message), headers={"X-Request-ID": request_id})


@pytest.mark.parametrize("dialect", ["native", "openai"])
async def test_upstream_closed_within_half_a_second_of_the_client_leaving_before_the_first_token(
    patient_gateway: Gateway, simulator: Simulator, dialect: str
) -> None:
    """Catches: `handler_cancellation=False` in run.py (the handler waits on the upstream's first
    token, 60 s away).
    """
    rid = new_request_id("bound-pre-token")
    async with aiohttp.ClientSession() as http:
        async with post(http, patient_gateway, dialect, "x\n#sim fault=hang_first", rid) as response:
            assert response.status == 200
            await sim_wait(http, simulator.url, rid, "opened")
            left = time.time()
            response.close()
        record = await sim_wait(http, simulator.url, rid, "closed", seconds=3)
    assert record["outcome"] == "client_aborted"
    assert record["closed_at"] - left < BOUND


@pytest.mark.parametrize("dialect", ["native", "openai"])
async def test_upstream_closed_within_half_a_second_of_the_client_leaving_mid_stream(
    patient_gateway: Gateway, simulator: Simulator, dialect: str
) -> None:
    """The upstream has sent tokens and gone quiet (idle deadline 60 s away) when the client leaves.

    Catches: `handler_cancellation=False` in run.py, and the explicit upstream close removed
    (`_close_opened` in server/chat_call.py).
    """
    rid = new_request_id("bound-mid")
    async with aiohttp.ClientSession() as http:
        async with post(http, patient_gateway, dialect, "x\n#sim tokens=8 fault=hang_mid", rid) as response:
            seen = 0
            async for event in iter_events(response):
                seen += carries_token(event)
                if seen == 4:  # the simulator hangs after half of the tokens
                    break
            left = time.time()
            response.close()
        record = await sim_wait(http, simulator.url, rid, "closed", seconds=3)
    assert record["outcome"] == "client_aborted"
    assert record["closed_at"] - left < BOUND


async def test_every_upstream_closed_within_half_a_second_and_every_request_ended_when_a_crowd_leaves_together(
    patient_gateway: Gateway, simulator: Simulator
) -> None:
    """CROWD clients leave mid-stream in one loop turn: each upstream is closed within the bound of its
    client leaving, and each request ends as a disconnect (none left waiting for its turn to be torn
    down, see Lifecycle.after_leaving).

    Catches: the turns stopping after the first departure.
    """
    rids = [new_request_id(f"bound-crowd-{index}") for index in range(CROWD)]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def open_stream(rid: str) -> aiohttp.ClientResponse:
            response: aiohttp.ClientResponse = await post(
                http, patient_gateway, "openai", "x\n#sim tokens=8 fault=hang_mid", rid
            )
            assert response.status == 200
            seen = 0
            async for event in iter_events(response):
                seen += carries_token(event)
                if seen == 4:  # the simulator hangs after half of the tokens
                    break
            return response

        responses = await asyncio.gather(*(open_stream(rid) for rid in rids))
        left = time.time()
        for response in responses:
            response.close()
        records = [await sim_wait(http, simulator.url, rid, "closed", seconds=3) for rid in rids]
    assert [record["outcome"] for record in records] == ["client_aborted"] * CROWD
    assert max(record["closed_at"] for record in records) - left < BOUND
    for rid in rids:
        assert patient_gateway.process.wait_for_event("request_finished", request_id=rid)["outcome"] == (
            "client_disconnected"
        )


async def test_upstream_closed_within_half_a_second_of_the_client_leaving_a_non_streaming_chat(
    patient_gateway: Gateway, simulator: Simulator
) -> None:
    """Catches: `handler_cancellation=False` in run.py (the call would wait out its 120 s total)."""
    rid = new_request_id("bound-chat")
    async with aiohttp.ClientSession() as http:
        request = asyncio.create_task(
            http.post(
                patient_gateway.url + "/chat",
                json={"message": "x\n#sim fault=hang_first"},
                headers={"X-Request-ID": rid},
            )
        )
        await sim_wait(http, simulator.url, rid, "opened")
        left = time.time()
        request.cancel()  # the client gives up: aiohttp closes its connection
        with pytest.raises(asyncio.CancelledError):
            await request
        record = await sim_wait(http, simulator.url, rid, "closed", seconds=3)
    assert record["outcome"] == "client_aborted"
    assert record["closed_at"] - left < BOUND


async def test_upstream_closed_within_send_timeout_and_half_a_second_of_a_client_that_stalls(
    send_timeout_gateway: Gateway, simulator: Simulator
) -> None:
    """A client that accepts nothing: the send timeout (1 s) cuts it and the upstream goes with it.

    The simulator pauses once the gateway stopped reading it, which is after the gateway's write to
    the client blocked; so the upstream must be closed within send_timeout + 0.5 s of that pause
    (the send timeout aborts the client's connection, and the relay's client-gone hook closes the
    upstream with it). The client never reads (`open_unread_stream`), so the send timeout's clock,
    which restarts whenever the client takes more, runs from about the pause. (With an aiohttp
    client, the bound failed twice under the full suite's load.)
    """
    rid = new_request_id("bound-stalled")
    path, make_body = ROUTES["openai"]
    with open_unread_stream(send_timeout_gateway.url, path, make_body("x\n#sim tokens=150000"), rid):
        async with aiohttp.ClientSession() as http:
            paused = await sim_wait(http, simulator.url, rid, "paused", seconds=30)
            stalled_by = time.time()
            assert paused["outcome"] == "active"
            record = await sim_wait(http, simulator.url, rid, "closed", seconds=5)
    assert record["outcome"] == "client_aborted"
    log = await asyncio.to_thread(send_timeout_gateway.process.wait_for_event, "request_finished", request_id=rid)
    # With the gateway's own account: its line's duration tells a late send timeout from a late close.
    assert record["closed_at"] - stalled_by < SEND_TIMEOUT + BOUND, (record, log)
    assert log["error_code"] == "send_timeout"


async def test_a_browser_stream_reader_that_accepts_nothing_is_cut_by_the_send_timeout(
    send_timeout_gateway: Gateway, simulator: Simulator
) -> None:
    """A reader of a detached stream whose client reads nothing: the send timeout (1 s) ends its request.

    Its writes block first; the generation, its unread budget full, then stops reading the
    upstream, and the simulator pauses: the request must end within send_timeout + 0.5 s of that.
    Every other deadline is a minute away; the kernel's own (TCP_USER_TIMEOUT, three send
    timeouts) would end it two seconds later.
    """
    started = new_request_id("stalled-reader-stream")
    async with aiohttp.ClientSession() as http:
        body = {"message": "x\n#sim tokens=150000"}
        headers = {"X-Request-ID": started}
        async with http.post(send_timeout_gateway.url + "/chat/streams", json=body, headers=headers) as response:
            stream_id = (await response.json())["id"]
        rid = new_request_id("stalled-reader")
        address = urlsplit(send_timeout_gateway.url)
        # A client that never reads, with a small receive buffer: the gateway's writes to it block soon.
        with socket.socket() as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.connect((address.hostname, address.port))
            client.sendall(f"GET /chat/streams/{stream_id} HTTP/1.1\r\nHost: x\r\nX-Request-ID: {rid}\r\n\r\n".encode())
            await sim_wait(http, simulator.url, started, "paused", seconds=30)
            stalled_by = time.time()
            log = send_timeout_gateway.process.wait_for_event("request_finished", 20, request_id=rid)
    finished = datetime.fromisoformat(log["timestamp"]).timestamp()
    assert finished - stalled_by < SEND_TIMEOUT + BOUND


async def test_upstream_closed_within_half_a_second_of_a_deadline_ending_the_stream_for_a_client_that_stays(
    total_timeout_gateway: Gateway, simulator: Simulator
) -> None:
    """The total deadline ends the stream with an error event; the client stays, the upstream goes.

    Nothing on the client's side closes the upstream here: only the handler's own close does.
    Catches: the explicit upstream close removed (server/chat_call.py): the connection then waits
    for garbage collection.
    """
    rid = new_request_id("bound-deadline")
    async with aiohttp.ClientSession() as http:
        async with post(http, total_timeout_gateway, "openai", "x\n#sim tokens=100000 gap_ms=20", rid) as response:
            async for event in iter_events(response):
                if '"error"' in event.data:
                    ended = time.time()
                    break
            else:
                raise AssertionError("the stream ended without its error event")
            record = await sim_wait(http, simulator.url, rid, "closed", seconds=5)
    assert event.json()["error"]["code"] == "total_timeout"
    assert record["outcome"] == "client_aborted"
    assert record["closed_at"] - ended < BOUND
