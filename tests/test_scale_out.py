"""Two `python run.py` instances sharing browser streams through a real redis-server, behind real nginx.

Each instance is addressed directly when a test needs to say which one does what, and through
nginx where the point is that the load balancer can send a request anywhere.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil
import pytest
import redis.asyncio as aioredis

from tests.conftest import StartNginx
from tests.support.client import new_request_id, sim_wait
from tests.support.processes import Gateway, ManagedProcess, Simulator, clean_env, free_port, start_gateway
from tests.support.resilience import ask, attempts, gateway_with
from tests.support.security import KEY_ALPHA, KEY_FROM_ENV, KEY_RPM, RPM, bearer, start_keyed_gateway
from tests.support.servers import NginxServer, RedisServer
from tests.support.sse import Event, SSEParser, tokens_text

LONG = "#sim tokens=100000 gap_ms=20"


def redis_env(redis_server: RedisServer) -> dict[str, str]:
    return {"SLUICE_REDIS_URL": redis_server.url, "SLUICE_REDIS_LEASE_SECONDS": "1.0"}


@dataclass
class Cluster:
    first: Gateway
    second: Gateway
    nginx: NginxServer
    simulator: Simulator
    redis: RedisServer


@pytest.fixture
def cluster(simulator: Simulator, redis_server: RedisServer, start_nginx_in_front: StartNginx) -> Iterator[Cluster]:
    started: list[Gateway] = []
    try:
        for _ in range(2):
            started.append(start_gateway(upstream=simulator, env=redis_env(redis_server)))
        nginx = start_nginx_in_front([g.url.removeprefix("http://") for g in started])
        yield Cluster(started[0], started[1], nginx, simulator, redis_server)
    finally:
        for gateway in started:
            gateway.process.stop()
            # Shown only when the test failed: what went wrong inside the instances.
            print(*(e for e in gateway.process.events() if e.get("level") in ("error", "critical")), sep="\n")


async def start(
    http: aiohttp.ClientSession, url: str, message: str, request_id: str | None = None, key: str | None = None
) -> str:
    headers = {"X-Request-ID": request_id} if request_id else {}
    headers.update(bearer(key) if key else {})
    async with http.post(url + "/chat/streams", json={"message": message}, headers=headers) as response:
        assert response.status == 201, await response.text()
        return str((await response.json())["id"])


class Reader:
    """One connection to a stream's events, read a little at a time."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.events: list[Event] = []
        self._parser = SSEParser()

    @classmethod
    async def open(
        cls, http: aiohttp.ClientSession, url: str, stream_id: str, after: str | None = None, key: str | None = None
    ) -> Reader:
        headers = {"Last-Event-ID": after} if after else {}
        headers.update(bearer(key) if key else {})
        response = await http.get(f"{url}/chat/streams/{stream_id}", headers=headers)
        assert response.status == 200, await response.text()
        return cls(response)

    async def until(self, count: int) -> list[Event]:
        """Read until `count` events with data have arrived (or the stream ended)."""
        async for chunk in self.response.content.iter_any():
            self.events.extend(e for e in self._parser.feed(chunk) if e.comment is None and e.data)
            if len(self.events) >= count:
                break
        return self.events

    async def rest(self) -> list[Event]:
        async for chunk in self.response.content.iter_any():
            self.events.extend(e for e in self._parser.feed(chunk) if e.comment is None and e.data)
        return self.events

    def close(self) -> None:
        self.response.close()


def seqs(events: list[Event]) -> list[int]:
    return [int(str(e.id).rsplit(":", 1)[1]) for e in events]


async def test_a_stream_started_on_one_instance_is_read_cut_and_resumed_on_the_other_with_identical_text(
    cluster: Cluster,
) -> None:
    message = "across\n#sim tokens=60 gap_ms=10"
    async with aiohttp.ClientSession() as http:
        stream_id = await start(http, cluster.first.url, message)
        reader = await Reader.open(http, cluster.second.url, stream_id)
        head = list(await reader.until(5))[:5]
        reader.close()  # cut
        resumed = await Reader.open(http, cluster.second.url, stream_id, after=str(head[-1].id))
        tail = await asyncio.wait_for(resumed.rest(), 30)
        # Read whole again through nginx, from either instance: the same events.
        whole = await asyncio.wait_for((await Reader.open(http, cluster.nginx.url, stream_id)).rest(), 30)
        async with http.post(cluster.first.url + "/chat", json={"message": message}) as response:
            reply = (await response.json())["response"]
    events = head + tail
    assert seqs(events) == list(range(1, len(events) + 1))
    assert events[-1].event == "done"
    assert [(e.id, e.data) for e in whole] == [(e.id, e.data) for e in events]
    assert tokens_text(events) == reply


@pytest.mark.parametrize("through", ["producer", "other"])
async def test_a_stop_through_either_instance_closes_the_upstream_and_ends_the_stream(
    cluster: Cluster, through: str
) -> None:
    rid = new_request_id(f"stop-{through}")
    async with aiohttp.ClientSession() as http:
        stream_id = await start(http, cluster.first.url, "stop me\n" + LONG, rid)
        reader = await Reader.open(http, cluster.second.url, stream_id)
        await reader.until(3)
        stopper = cluster.first if through == "producer" else cluster.second
        async with http.delete(f"{stopper.url}/chat/streams/{stream_id}") as response:
            assert response.status == 204
        record = await sim_wait(http, cluster.simulator.url, rid, "closed")
        events = await asyncio.wait_for(reader.rest(), 10)
    assert record["outcome"] == "client_aborted"
    assert events[-1].event == "failed"
    assert events[-1].json()["error"]["code"] == "stream_cancelled"


async def test_sigkill_of_the_producing_instance_ends_readers_elsewhere_with_generation_lost(
    cluster: Cluster,
) -> None:
    async with aiohttp.ClientSession() as http:
        stream_id = await start(http, cluster.first.url, "doomed\n" + LONG)
        reader = await Reader.open(http, cluster.second.url, stream_id)
        await reader.until(3)
        cluster.first.process.signal(signal.SIGKILL)
        # Lease 1 s in these tests; the bound leaves room on a loaded machine.
        events = await asyncio.wait_for(reader.rest(), 20)
    assert events[-1].event == "failed"
    assert events[-1].json()["error"]["code"] == "generation_lost"
    assert seqs(events[:-1]) == list(range(1, len(events)))


async def test_redis_killed_and_restarted_mid_stream_loses_nothing_for_a_reader_on_the_other_instance(
    cluster: Cluster,
) -> None:
    message = "survive\n#sim tokens=150 gap_ms=20"
    async with aiohttp.ClientSession() as http:
        stream_id = await start(http, cluster.first.url, message)
        reader = await Reader.open(http, cluster.second.url, stream_id)
        await reader.until(5)
        cluster.redis.kill()
        cluster.first.process.wait_for_event("redis_down")
        cluster.second.process.wait_for_event("redis_down")
        cluster.redis.start()
        events = await asyncio.wait_for(reader.rest(), 30)
        # The restarted Redis started empty: the producer wrote the whole stream again.
        again = await asyncio.wait_for((await Reader.open(http, cluster.second.url, stream_id)).rest(), 30)
        async with http.post(cluster.first.url + "/chat", json={"message": message}) as response:
            reply = (await response.json())["response"]
    assert events[-1].event == "done"
    assert seqs(events) == list(range(1, len(events) + 1))
    assert tokens_text(events) == reply
    assert [(e.id, e.data) for e in again] == [(e.id, e.data) for e in events]


async def test_with_redis_down_new_detached_streams_get_503_while_v1_and_attached_streams_work(
    cluster: Cluster,
) -> None:
    cluster.redis.kill()
    async with aiohttp.ClientSession() as http:
        async with http.post(cluster.first.url + "/chat/streams", json={"message": "hi"}) as response:
            assert response.status == 503
            assert response.headers["Retry-After"].isdigit()
            assert (await response.json())["error"]["code"] == "store_unavailable"
        body = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        async with http.post(cluster.first.url + "/v1/chat/completions", json=body) as response:
            assert response.status == 200
            assert (await response.read()).endswith(b"data: [DONE]\n\n")
        async with http.post(cluster.first.url + "/chat/stream", json={"message": "hi"}) as response:
            assert response.status == 200
            assert b"event: done" in await response.read()
        async with http.get(cluster.first.url + "/readyz") as ready, http.get(cluster.first.url + "/livez") as live:
            assert (ready.status, (await ready.json())["status"]) == (200, "redis_down")
            assert live.status == 200


async def test_a_burst_of_more_streams_than_redis_connections_waits_for_them_instead_of_taking_redis_for_down(
    simulator: Simulator, redis_server: RedisServer
) -> None:
    # redis-py's default pool failed a command past its connections at once (MaxConnectionsError):
    # 150 streams started together got 503 store_unavailable, and redis_down was logged.
    env = {**redis_env(redis_server), "SLUICE_REDIS_COMMAND_CONNECTIONS": "2"}
    gateway = start_gateway(upstream=simulator, env=env)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            ids = await asyncio.wait_for(
                asyncio.gather(*(start(http, gateway.url, "burst\n#sim tokens=2") for _ in range(40))), 30
            )
    finally:
        gateway.process.stop()
    assert len(set(ids)) == 40
    assert gateway.process.events("redis_down") == []


async def test_a_detached_stream_running_when_redis_dies_finishes_for_its_reader_on_the_same_instance(
    cluster: Cluster,
) -> None:
    message = "local\n#sim tokens=80 gap_ms=20"
    async with aiohttp.ClientSession() as http:
        stream_id = await start(http, cluster.first.url, message)
        reader = await Reader.open(http, cluster.first.url, stream_id)
        await reader.until(3)
        cluster.redis.kill()
        cluster.first.process.wait_for_event("redis_down")
        events = await asyncio.wait_for(reader.rest(), 30)
    assert events[-1].event == "done"
    assert seqs(events) == list(range(1, len(events) + 1))


async def test_a_reader_on_another_instance_keeps_the_generation_past_the_grace_period(
    simulator: Simulator, redis_server: RedisServer
) -> None:
    env = {**redis_env(redis_server), "SLUICE_BROWSER_READER_GRACE_SECONDS": "1.0"}
    gateways = [start_gateway(upstream=simulator, env=env) for _ in range(2)]
    try:
        rid = new_request_id("grace")
        async with aiohttp.ClientSession() as http:
            stream_id = await start(http, gateways[0].url, "watched\n#sim tokens=200 gap_ms=20", rid)
            reader = await Reader.open(http, gateways[1].url, stream_id)
            events = await asyncio.wait_for(reader.rest(), 30)
    finally:
        for gateway in gateways:
            gateway.process.stop()
    # 200 tokens at 20 ms: four seconds, four grace periods, and never abandoned.
    assert events[-1].event == "done"
    assert gateways[0].process.events("browser_stream_abandoned") == []


async def test_workers_on_redis_read_each_others_streams_without_any_unix_socket(
    simulator: Simulator, redis_server: RedisServer
) -> None:
    port = free_port()
    env = clean_env(
        {
            "AI_INTEGRATIONS_OPENAI_API_KEY": "sk-x",
            "AI_INTEGRATIONS_OPENAI_BASE_URL": simulator.base_url,
            **redis_env(redis_server),
        }
    )
    argv = [sys.executable, "run.py", "--port", str(port), "--config", "config/test.toml", "--workers", "2"]
    supervisor = ManagedProcess(argv, env).start()
    url = f"http://127.0.0.1:{port}"
    try:
        supervisor.wait_for_line(lambda _: len(supervisor.events("sluice_listening")) >= 2)
        fresh = aiohttp.TCPConnector(force_close=True)  # a new connection per request: either worker
        async with aiohttp.ClientSession(connector=fresh) as http:
            stream_id = await start(http, url, "w\n#sim tokens=5")
            bodies, pids = [], set()
            for _ in range(40):
                async with http.get(f"{url}/chat/streams/{stream_id}") as response:
                    bodies.append(await Reader(response).rest())
                async with http.get(url + "/livez") as response:
                    pids.add((await response.json())["pid"])
                if len(pids) == 2 and len(bodies) >= 4:
                    break
        workers = [psutil.Process(pid) for pid in pids]
        sockets = [conn for worker in workers for conn in worker.net_connections("unix") if conn.laddr]
    finally:
        supervisor.stop()
    assert len(pids) == 2
    assert len({tokens_text(events) for events in bodies}) == 1
    assert all(events[-1].event == "done" for events in bodies)
    assert sockets == []  # no worker proxy: each worker reads the streams from Redis


async def test_sigterm_to_the_producer_ends_its_streams_for_readers_elsewhere_with_the_shutdown_event(
    cluster: Cluster,
) -> None:
    async with aiohttp.ClientSession() as http:
        stream_id = await start(http, cluster.first.url, "drained\n" + LONG)
        reader = await Reader.open(http, cluster.second.url, stream_id)
        await reader.until(3)
        cluster.first.process.signal(signal.SIGTERM)
        # Meanwhile nginx answers new detached streams from the instance that stays.
        for n in range(4):
            async with http.post(cluster.nginx.url + "/chat/streams", json={"message": f"new {n}"}) as response:
                assert response.status == 201, await response.text()
        assert await asyncio.to_thread(cluster.first.process.wait, 20) == 0
        events = await asyncio.wait_for(reader.rest(), 20)
    assert events[-1].event == "failed"
    assert events[-1].json()["error"]["code"] == "server_shutting_down"
    assert seqs(events) == list(range(1, len(events) + 1))


async def test_an_upstream_breaker_opened_by_one_instance_refuses_on_the_other(
    simulator: Simulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    routing = "[routing]\nretries = 1\nbreaker_failures = 2\nbreaker_cooldown_seconds = 600\n"
    env = {**redis_env(redis_server), "SLUICE_UPSTREAM_PROBE_INTERVAL": "600"}
    first = gateway_with(tmp_path, "first", simulator, routing, **env)
    try:
        second = gateway_with(tmp_path, "second", simulator, routing, **env)
    except BaseException:
        first.process.stop()
        raise
    try:
        # One request, two failed attempts (retries = 1): the breaker opens.
        assert (await ask(first, "fault=server_error", new_request_id("trip")))[0] == 502
        rid = new_request_id("refused-elsewhere")
        status, _, error = await ask(second, "tokens=2", rid)
    finally:
        first.process.stop()
        second.process.stop()
    assert status == 503
    assert int(error["headers"]["Retry-After"]) >= 1
    assert await attempts(simulator, rid) == []  # refused before any upstream request


async def test_a_stream_longer_than_the_unread_budget_is_not_held_back_for_a_reader_elsewhere(
    simulator: Simulator, redis_server: RedisServer
) -> None:
    env = {**redis_env(redis_server), "SLUICE_BROWSER_MAX_BUFFERED_BYTES": "4000"}
    gateways = [start_gateway(upstream=simulator, env=env) for _ in range(2)]
    try:
        async with aiohttp.ClientSession() as http:
            # About 12 KB of events: three budgets, read only through the other instance.
            stream_id = await start(http, gateways[0].url, "long\n#sim tokens=150 gap_ms=2")
            reader = await Reader.open(http, gateways[1].url, stream_id)
            events = await asyncio.wait_for(reader.rest(), 60)
    finally:
        for gateway in gateways:
            gateway.process.stop()
    assert events[-1].event == "done"
    assert seqs(events) == list(range(1, len(events) + 1))


async def test_a_resume_past_the_end_on_another_instance_does_not_release_the_producers_hold_back(
    simulator: Simulator, redis_server: RedisServer
) -> None:
    # A Last-Event-ID is the client's claim. Reported as read, one past the end emptied the
    # producer's unread events at every renewal: nobody had read the stream, yet it ran on and its
    # first events were dropped before its real reader came (410).
    env = {**redis_env(redis_server), "SLUICE_BROWSER_MAX_BUFFERED_EVENTS": "100"}
    gateways = [start_gateway(upstream=simulator, env=env) for _ in range(2)]
    rid = new_request_id("claimed-ahead")
    try:
        async with aiohttp.ClientSession() as http:
            stream_id = await start(http, gateways[0].url, "long\n#sim tokens=300 gap_ms=1", rid)
            gateways[0].process.wait_for_event("browser_stream_held_back", request_id=rid)
            claim = await Reader.open(http, gateways[1].url, stream_id, after=f"{stream_id}:100000")
            # Several renewals' worth of reports (lease 1 s), in which the claim would have let the
            # producer read on: held back, the stream cannot finish.
            with pytest.raises(AssertionError, match="timed out"):
                gateways[0].process.wait_for_event("browser_stream_finished", timeout=2, request_id=rid)
            reader = await Reader.open(http, gateways[1].url, stream_id)
            events = await asyncio.wait_for(reader.rest(), 60)
            claim.close()
    finally:
        for gateway in gateways:
            gateway.process.stop()
    assert events[-1].event == "done", (events[-1], len(events))
    assert seqs(events) == list(range(1, len(events) + 1))


async def test_a_keys_requests_per_minute_are_counted_once_across_two_instances(
    simulator: Simulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    gateways = [start_keyed_gateway(tmp_path, simulator, env=redis_env(redis_server)) for _ in range(2)]
    chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi\n#sim tokens=2"}]}
    statuses = []
    try:
        async with aiohttp.ClientSession() as http:
            # RPM requests, taking turns between the instances, then one more on each.
            for n in range(RPM + 2):
                url = gateways[n % 2].url + "/v1/chat/completions"
                async with http.post(url, json=chat, headers=bearer(KEY_RPM)) as response:
                    statuses.append(response.status)
    finally:
        for gateway in gateways:
            gateway.process.stop()
    assert statuses[:RPM] == [200] * RPM
    assert statuses[RPM:] == [429, 429]  # each instance alone would still have allowed these


async def test_with_fail_open_off_a_keyed_request_is_refused_with_503_limits_unavailable_while_redis_is_down(
    simulator: Simulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    env = {**redis_env(redis_server), "SLUICE_REDIS_FAIL_OPEN": "false"}
    chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi\n#sim tokens=2"}]}
    with start_keyed_gateway(tmp_path, simulator, env=env) as gateway:
        url = gateway.url + "/v1/chat/completions"
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json=chat, headers=bearer(KEY_RPM)) as response:
                assert response.status == 200  # counted in Redis while it answers
            redis_server.kill()
            async with http.post(url, json=chat, headers=bearer(KEY_RPM)) as response:
                status, retry_after, body = response.status, response.headers.get("Retry-After"), await response.json()
    assert (status, retry_after) == (503, "5")  # config/default.toml: retry_after = 5
    assert body == {
        "error": {
            "message": "Sluice cannot reach Redis to count this key's use; retry shortly.",
            "type": "server_error",
            "param": None,
            "code": "limits_unavailable",
        }
    }


async def test_a_producer_draining_while_redis_pauses_writes_still_gets_its_last_events_to_readers_elsewhere(
    simulator: Simulator, redis_server: RedisServer
) -> None:
    # Leases outlast the pause (Redis expires nothing while writes are paused, but reads a lapsed
    # key as gone), and a short drain ends the stream while its writes are held.
    env = {**redis_env(redis_server), "SLUICE_REDIS_LEASE_SECONDS": "5"}
    with (
        start_gateway(upstream=simulator, env={**env, "SLUICE_SERVER_DRAIN_TIMEOUT": "0.5"}) as producer,
        start_gateway(upstream=simulator, env=env) as other,
    ):
        async with aiohttp.ClientSession() as http, aioredis.Redis.from_url(redis_server.url) as redis:
            stream_id = await start(http, producer.url, "drained\n" + LONG)
            reader = await Reader.open(http, other.url, stream_id)
            await reader.until(3)
            # As a failover does: writes wait, under the producer's command timeout (2 s). Its flusher
            # is held mid-write as it drains, so only the flush at close can carry the stream's end.
            await redis.client_pause(1500, all=False)
            producer.process.signal(signal.SIGTERM)
            assert await asyncio.to_thread(producer.process.wait, 20) == 0
            events = await asyncio.wait_for(reader.rest(), 20)
    # Without that flush: the shutdown event and the end never reach Redis, and the lease lapses.
    assert events[-1].event == "failed"
    assert events[-1].json()["error"]["code"] == "server_shutting_down"
    assert seqs(events) == list(range(1, len(events) + 1))


@pytest.fixture
def keyed_pair(simulator: Simulator, redis_server: RedisServer, tmp_path: Path) -> Iterator[tuple[Gateway, Gateway]]:
    """Two instances with the same gateway keys, sharing one Redis."""
    started: list[Gateway] = []
    try:
        for _ in range(2):
            started.append(start_keyed_gateway(tmp_path, simulator, env=redis_env(redis_server)))
        yield started[0], started[1]
    finally:
        for gateway in started:
            gateway.process.stop()


async def test_a_keys_stream_is_read_and_stopped_through_the_other_instance_with_that_key(
    keyed_pair: tuple[Gateway, Gateway],
) -> None:
    producer, other = keyed_pair
    async with aiohttp.ClientSession() as http:
        stream_id = await start(http, producer.url, "mine\n" + LONG, key=KEY_ALPHA)
        reader = await Reader.open(http, other.url, stream_id, key=KEY_ALPHA)
        await reader.until(3)
        async with http.delete(f"{other.url}/chat/streams/{stream_id}", headers=bearer(KEY_ALPHA)) as response:
            assert response.status == 204
        events = await asyncio.wait_for(reader.rest(), 10)
    assert events[-1].event == "failed"
    assert events[-1].json()["error"]["code"] == "stream_cancelled"


async def test_another_keys_stream_on_the_other_instance_answers_as_unknown_and_is_not_stopped(
    keyed_pair: tuple[Gateway, Gateway],
) -> None:
    producer, other = keyed_pair
    async with aiohttp.ClientSession() as http:
        stream_id = await start(http, producer.url, "mine\n" + LONG, key=KEY_ALPHA)
        reader = await Reader.open(http, producer.url, stream_id, key=KEY_ALPHA)
        await reader.until(3)
        answers = []
        for target in (stream_id, "no-such-stream"):
            url = f"{other.url}/chat/streams/{target}"
            async with http.get(url, headers=bearer(KEY_FROM_ENV)) as r:
                # Bounded: were the stream served, its body would not end for minutes.
                answers.append(("GET", target == stream_id, r.status, await asyncio.wait_for(r.read(), 10)))
            async with http.delete(url, headers=bearer(KEY_FROM_ENV)) as r:
                answers.append(("DELETE", target == stream_id, r.status, await r.read()))
        # The other key's DELETE stopped nothing: the stream still runs for its own reader.
        seen = len(await reader.until(3))
        more = await reader.until(seen + 3)
        reader.close()
        # Its owner stops it, or the instance's drain would wait for it at the fixture's end.
        async with http.delete(f"{producer.url}/chat/streams/{stream_id}", headers=bearer(KEY_ALPHA)) as r:
            assert r.status == 204
    assert [a[2:] for a in answers if a[1]] == [a[2:] for a in answers if not a[1]] == [(204, b""), (204, b"")]
    assert more[-1].event not in ("failed", "done")


BREAKER_GAUGE = re.compile(r'^sluice_upstream_breaker_state\{upstream="default"\} (\S+)$', re.MULTILINE)
SECONDS = 10  # a bound far from any real wait in the tests below


async def breaker_gauge(gateway: Gateway) -> float:
    """The upstream's breaker gauge on `gateway`: 0 closed, 1 half-open, 2 open."""
    async with aiohttp.ClientSession() as http, http.get(gateway.url + "/metrics") as response:
        found = BREAKER_GAUGE.search(await response.text())
    assert found is not None
    return float(found.group(1))


async def test_an_instance_refusing_for_a_breaker_another_opened_reports_it_open_in_its_gauge(
    simulator: Simulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    routing = "[routing]\nretries = 1\nbreaker_failures = 2\nbreaker_cooldown_seconds = 600\n"
    env = {**redis_env(redis_server), "SLUICE_UPSTREAM_PROBE_INTERVAL": "600"}
    with (
        gateway_with(tmp_path, "first", simulator, routing, **env) as first,
        gateway_with(tmp_path, "second", simulator, routing, **env) as second,
    ):
        assert (await ask(first, "fault=server_error", new_request_id("trip")))[0] == 502
        assert (await ask(second, "tokens=2", new_request_id("refused")))[0] == 503
        # The alert takes the highest gauge of all instances: each must say what it refuses for.
        assert await breaker_gauge(second) == 2.0


async def test_readyz_answers_within_a_bound_while_redis_hangs(simulator: Simulator, redis_server: RedisServer) -> None:
    assert redis_server.process is not None
    loop = asyncio.get_running_loop()
    with start_gateway(upstream=simulator, env=redis_env(redis_server)) as gateway:
        async with aiohttp.ClientSession() as http:
            async with http.get(gateway.url + "/readyz") as ready:
                assert (ready.status, (await ready.json())["status"]) == (200, "ready")
            redis_server.process.signal(signal.SIGSTOP)  # as a failover or a stalled host: no answer at all
            try:
                began = loop.time()
                async with http.get(gateway.url + "/readyz") as ready:
                    answer = (ready.status, (await ready.json())["status"])
                took = loop.time() - began
            finally:
                redis_server.process.signal(signal.SIGCONT)
    assert answer == (200, "redis_slow")
    # Under a probe's 1 s timeout; Redis's command timeout (2 s) is what it used to wait.
    assert took < 1.0


async def test_sigterm_to_an_instance_reading_a_stream_generated_elsewhere_ends_its_reader_with_the_shutdown_event(
    simulator: Simulator, redis_server: RedisServer
) -> None:
    env = redis_env(redis_server)
    loop = asyncio.get_running_loop()
    # A drain far longer than the test's bounds: the reader's end must not wait for it.
    with (
        start_gateway(upstream=simulator, env=env) as producer,
        start_gateway(upstream=simulator, env={**env, "SLUICE_SERVER_DRAIN_TIMEOUT": "60"}) as other,
    ):
        async with aiohttp.ClientSession() as http:
            stream_id = await start(http, producer.url, "read elsewhere\n" + LONG)
            reader = await Reader.open(http, other.url, stream_id)
            await reader.until(3)
            began = loop.time()
            other.process.signal(signal.SIGTERM)
            # A body cut without its last chunk raises ClientPayloadError here.
            events = await asyncio.wait_for(reader.rest(), SECONDS)
            ended = loop.time() - began
            assert await asyncio.to_thread(other.process.wait, SECONDS) == 0
            # The stream goes on where it is generated: the reconnect resumes it there.
            resumed = await Reader.open(http, producer.url, stream_id, after=str(events[-2].id))
            more = await asyncio.wait_for(resumed.until(1), SECONDS)
            resumed.close()
            async with http.delete(f"{producer.url}/chat/streams/{stream_id}") as stopped:
                assert stopped.status == 204
    final = events[-1]
    assert (final.event, final.json()["error"]["code"]) == ("failed", "server_shutting_down")
    assert final.retry == 5000  # the drain's hint (Retry-After 5 s), as its own streams get
    assert final.id is None  # a reconnect names the last event it did get
    assert seqs(events[:-1]) == list(range(1, len(events)))
    assert seqs(more)[0] == len(events)
    assert ended < SECONDS
    assert other.process.events("drain_ending_readers")


async def test_a_resume_at_or_past_the_end_of_a_finished_stream_is_204_on_either_instance(cluster: Cluster) -> None:
    # Read as a live stream on the instance that did not produce it, a resume past the final event
    # once got 200 and heartbeats until retention: EventSource never stopped reconnecting to it.
    bound = 5.0  # seconds for an answer: far below the heartbeat (15 s) and retention (300 s)
    async with aiohttp.ClientSession() as http:
        stream_id = await start(http, cluster.first.url, "short\n#sim tokens=3")
        events = await asyncio.wait_for((await Reader.open(http, cluster.first.url, stream_id)).rest(), 30)
        assert events[-1].event == "done"
        final = seqs(events)[-1]
        # The end is an entry of its own after the final event: once Redis has it, every instance knows.
        async with aioredis.Redis.from_url(cluster.redis.url) as redis:
            stored = await redis.xread({f"sluice:stream:{stream_id}": f"0-{final}"}, count=1, block=10_000)
            assert stored, "the stream's end never reached Redis"
        answers: dict[tuple[str, int], tuple[int, bytes]] = {}
        for after in (final, final + 1, final + 1000):
            for name, gateway in (("producer", cluster.first), ("other", cluster.second)):
                headers = {"Last-Event-ID": f"{stream_id}:{after}"}
                async with (
                    asyncio.timeout(bound),
                    http.get(f"{gateway.url}/chat/streams/{stream_id}", headers=headers) as r,
                ):
                    answers[name, after] = (r.status, await r.read())
    assert set(answers.values()) == {(204, b"")}, answers


async def test_a_resume_past_the_newest_event_of_a_live_stream_waits_on_either_instance_and_ends_with_it(
    cluster: Cluster,
) -> None:
    bound = 5.0  # seconds for the readers to end: far below the heartbeat (15 s) and retention (300 s)
    async with aiohttp.ClientSession() as http:
        stream_id = await start(http, cluster.first.url, "claimed ahead\n" + LONG)
        ahead = f"{stream_id}:100000"
        # 200: the stream is live, so more may come (Reader.open asserts it).
        readers = [await Reader.open(http, g.url, stream_id, after=ahead) for g in (cluster.first, cluster.second)]
        async with http.delete(f"{cluster.first.url}/chat/streams/{stream_id}") as response:
            assert response.status == 204  # once the end is stored
        ended = [await asyncio.wait_for(reader.rest(), bound) for reader in readers]
    assert ended == [[], []]  # nothing after the claim, and the end closes both connections
