"""/readyz on an instance that learns its upstream's breaker only from the record another instance shares.

Two `python run.py` instances share a real redis-server and the simulator process. Only the first
sends chat requests, and the simulator fails them; the second never calls the upstream, so all it
knows of the breaker is the shared record each /readyz reads, and, while Redis is too slow to wait
for (`BREAKER_READ_SECONDS`), the record it read last (server/routes/health.py).

README, Running in production: /readyz is 503 `upstream_down` while every upstream's breaker is
open, else 200 `ready`. Open means the cooldown runs or a trial holds the breaker; half-open (the
cooldown over, its trial free) and closed are both ready.
"""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp

from tests.support.client import new_request_id, sim_wait
from tests.support.processes import Gateway, Simulator
from tests.support.resilience import ask, gateway_with
from tests.support.servers import RedisServer

# Two failures in a row open the breaker; no retry, so each request is one attempt; no probe
# within a test, so nothing but the first instance's own requests ever takes the breaker's trial.
ROUTING = {
    "SLUICE_ROUTING_BREAKER_FAILURES": "2",
    "SLUICE_ROUTING_RETRIES": "0",
    "SLUICE_UPSTREAM_PROBE_INTERVAL": "600",
}
LONG_COOLDOWN = 600  # nothing in a test outlives it: the breaker stays open
SHORT_COOLDOWN = 2  # a test waits it out (on /readyz, within WAIT_SECONDS)
WAIT_SECONDS = 15.0
# The trial's first token comes this late: the trial holds the breaker meanwhile (an attempt ends
# at its first token). Far longer than one /readyz, below the gateway's 5 s first-token timeout.
TRIAL_TTFT_MS = 3000
# Under a probe's 1 s timeout; what /readyz waits for Redis is BREAKER_READ_SECONDS (0.25 s).
PROBE_SECONDS = 1.0
GAUGE = re.compile(r'^sluice_upstream_breaker_state\{upstream="default"\} (\S+)$', re.MULTILINE)


@contextmanager
def two_instances(
    tmp_path: Path, simulator: Simulator, redis_server: RedisServer, cooldown: int
) -> Iterator[tuple[Gateway, Gateway]]:
    """The instance that calls the upstream, and the one that only reads the shared breaker."""
    env = {**ROUTING, "SLUICE_ROUTING_BREAKER_COOLDOWN_SECONDS": str(cooldown), "SLUICE_REDIS_URL": redis_server.url}
    with (
        gateway_with(tmp_path, "calling", simulator, **env) as calling,
        gateway_with(tmp_path, "reading", simulator, **env) as reading,
    ):
        yield calling, reading


async def readiness(gateway: Gateway) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(gateway.url + "/readyz") as response:
        return response.status, (await response.json())["status"]


async def until_ready(gateway: Gateway) -> None:
    """Wait until /readyz is 200: the breaker's cooldown is over."""
    deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
    while (await readiness(gateway))[0] != 200:
        assert asyncio.get_running_loop().time() < deadline, "the upstream never became ready"
        await asyncio.sleep(0.05)


async def breaker_gauge(gateway: Gateway) -> float:
    """The upstream's breaker gauge: 0 closed, 1 half-open, 2 open."""
    async with aiohttp.ClientSession() as http, http.get(gateway.url + "/metrics") as response:
        found = GAUGE.search(await response.text())
    assert found is not None
    return float(found.group(1))


async def open_breaker(gateway: Gateway) -> None:
    """Two failed requests in a row through `gateway`: the shared breaker opens."""
    for label in ("open-1", "open-2"):
        assert (await ask(gateway, "fault=server_error", new_request_id(label)))[0] == 502


async def test_readyz_is_upstream_down_on_an_instance_that_only_read_the_breaker_another_opened(
    simulator: Simulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    with two_instances(tmp_path, simulator, redis_server, LONG_COOLDOWN) as (calling, reading):
        before = await readiness(reading)
        await open_breaker(calling)
        after = await readiness(reading)
    assert before == (200, "ready")
    assert after == (503, "upstream_down")


async def test_readyz_is_ready_again_once_the_instance_that_opened_the_breaker_closes_it(
    simulator: Simulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    with two_instances(tmp_path, simulator, redis_server, SHORT_COOLDOWN) as (calling, reading):
        await open_breaker(calling)
        assert await readiness(reading) == (503, "upstream_down")
        await until_ready(reading)  # the cooldown is over: half-open, its trial free
        rid = new_request_id("closing-trial")
        async with aiohttp.ClientSession() as http:
            trial = asyncio.create_task(ask(calling, f"tokens=2 ttft_ms={TRIAL_TTFT_MS}", rid))
            await sim_wait(http, simulator.url, rid, "opened")
            while_trial_runs = await readiness(reading)  # within TRIAL_TTFT_MS of the trial's start
            trial_status = (await trial)[0]
        after_trial = await readiness(reading)
        gauge_after_trial = await breaker_gauge(reading)
    assert while_trial_runs == (503, "upstream_down")  # the other instance's trial holds it
    assert trial_status == 200
    assert after_trial == (200, "ready")
    assert gauge_after_trial == 0  # closed, as the trial left it (the read /readyz made set it)


async def test_readyz_while_redis_hangs_is_upstream_down_by_the_open_breaker_it_last_read(
    simulator: Simulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    assert redis_server.process is not None
    loop = asyncio.get_running_loop()
    with two_instances(tmp_path, simulator, redis_server, LONG_COOLDOWN) as (calling, reading):
        assert await readiness(reading) == (200, "ready")  # it read the breaker closed first
        await open_breaker(calling)
        assert await readiness(reading) == (503, "upstream_down")
        redis_server.process.signal(signal.SIGSTOP)  # as a failover or a stalled host: no answer at all
        try:
            began = loop.time()
            answer = await readiness(reading)
            took = loop.time() - began
        finally:
            redis_server.process.signal(signal.SIGCONT)
    assert answer == (503, "upstream_down")
    assert took < PROBE_SECONDS
