"""A client that stops reading stops the upstream: `python run.py` against the simulator process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import psutil
import pytest

from tests.support.client import ROUTES, new_request_id, open_unread_stream, sim_wait
from tests.support.processes import Gateway, Simulator, start_gateway

TOKENS = 1_000_000  # about 200 MB of chunks: far more than every socket buffer on the way, and than a second's worth
WINDOW = 1.0  # seconds of stalled reading observed
SETTLE = 0.25  # seconds without a token sent that mean the buffers on the way are full
SETTLE_WINDOWS = 40
QUIET_WINDOWS = 2  # in a row
RSS_SLACK = 4 * 1024 * 1024
# Far past the settle windows and the observation (up to 11 s): config/test.toml's 5 s cut the stalled
# stream during them on a loaded machine, its upstream then closed rather than paused.
SEND_TIMEOUT = 60


@pytest.fixture(scope="module")
def patient(simulator: Simulator) -> Iterator[Gateway]:
    """A gateway that waits a minute for a client that stopped reading before it cuts the stream."""
    gateway = start_gateway(upstream=simulator, env={"SLUICE_STREAM_SEND_TIMEOUT": str(SEND_TIMEOUT)})
    yield gateway
    gateway.process.stop()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("route", ["openai", "native"])
async def test_a_client_that_stops_reading_holds_gateway_memory_and_upstream_tokens_flat(
    patient: Gateway, simulator: Simulator, route: str
) -> None:
    """Over a second of stalled reading, the upstream sends nothing more and the gateway grows by nothing.

    Sampled once the simulator paused and sent nothing for a moment (the gateway stopped reading
    it), and again a second later: a gateway that merely lags pauses the simulator too, but keeps
    reading and buffering after.
    Catches: `request.transport.set_write_buffer_limits(high=1 << 30)` right after the response
    starts (server/chat_call.py): writes never wait, so the gateway drains the upstream into memory.
    """
    rid = new_request_id(f"backpressure-flat-{route}")
    path, make_body = ROUTES[route]
    gateway = patient
    process = psutil.Process(gateway.process.pid)
    async with aiohttp.ClientSession() as http:
        # A client that never reads (with an aiohttp client, whose reads went on under load, the
        # settle windows below once ended before the buffers on the way were full).
        with open_unread_stream(gateway.url, path, make_body(f"hi\n#sim tokens={TOKENS}"), rid):
            record = await sim_wait(http, simulator.url, rid, "paused", seconds=30)
            # The first pause may only mean the gateway is slower than the simulator; the buffers
            # towards the client fill soon after. Nothing signals that, so settle: until short
            # windows in a row pass in which the simulator sent nothing (bounded; a gateway that
            # never stops reading never settles, and fails below). One quiet window alone can be a
            # gateway starved of CPU on a loaded machine, still filling the buffers after it.
            quiet = 0
            for _ in range(SETTLE_WINDOWS):
                sent = record["chunks_sent"]
                await asyncio.sleep(SETTLE)
                record = await sim_wait(http, simulator.url, rid, "opened")
                quiet = quiet + 1 if record["chunks_sent"] == sent else 0
                if quiet == QUIET_WINDOWS:
                    break
            rss_stalled = process.memory_info().rss
            await asyncio.sleep(WINDOW)  # the observation window
            later = await sim_wait(http, simulator.url, rid, "opened")
            rss_later = process.memory_info().rss
    assert later["outcome"] == "active"
    assert later["chunks_sent"] == record["chunks_sent"]
    assert rss_later - rss_stalled < RSS_SLACK
