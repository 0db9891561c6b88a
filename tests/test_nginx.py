"""deploy/nginx/sluice.conf run for real in front of `python run.py` instances.

nginx runs the shipped file with only its listen port and upstream servers changed (see
tests/support/servers.py), so what these tests show is what a user who installs it gets.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator

import aiohttp
import psutil
import pytest

from tests.conftest import StartNginx
from tests.support.client import new_request_id, sim_wait
from tests.support.processes import Gateway, Simulator, start_gateway
from tests.support.sse import Event, SSEParser, carries_token, iter_events

ROUTES = {"native": "/chat/stream", "openai": "/v1/chat/completions"}


def body(dialect: str, message: str) -> dict[str, object]:
    if dialect == "native":
        return {"message": message}
    return {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": message}]}


def address(gateway: Gateway) -> str:
    return gateway.url.removeprefix("http://")


@pytest.fixture
def two_gateways(simulator: Simulator) -> Iterator[tuple[Gateway, Gateway]]:
    """Two `python run.py` instances on the simulator process, as two replicas would be."""
    first = start_gateway(upstream=simulator)
    try:
        second = start_gateway(upstream=simulator)
    except BaseException:
        first.process.stop()
        raise
    yield first, second
    first.process.stop()
    second.process.stop()


@pytest.mark.parametrize("dialect", ROUTES)
async def test_events_pass_nginx_one_at_a_time_while_the_upstream_is_still_open(
    gateway: Gateway, simulator: Simulator, start_nginx_in_front: StartNginx, dialect: str
) -> None:
    nginx = start_nginx_in_front([address(gateway)])
    rid = new_request_id("nginx-through")
    received: list[Event] = []
    async with aiohttp.ClientSession() as http:
        async with http.post(
            nginx.url + ROUTES[dialect],
            json=body(dialect, "hi\n#sim tokens=4 fault=hang_mid"),
            headers={"X-Request-ID": rid},
        ) as response:
            assert response.status == 200
            async for event in iter_events(response):
                if carries_token(event):
                    received.append(event)
                if len(received) == 2:
                    break
            # Still open and silent: no later byte or the stream's end pushed these two through.
            record = await sim_wait(http, simulator.url, rid, "opened")
    assert len(received) == 2
    assert record["outcome"] == "active"


async def test_event_streams_through_nginx_are_never_compressed(
    gateway: Gateway, start_nginx_in_front: StartNginx
) -> None:
    nginx = start_nginx_in_front([address(gateway)])
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        async with http.post(
            nginx.url + "/chat/stream", json={"message": "hi"}, headers={"Accept-Encoding": "gzip, br"}
        ) as response:
            raw = await response.read()
    assert response.status == 200
    assert "Content-Encoding" not in response.headers
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert b"event: done" in raw


async def test_answers_through_nginx_name_no_server_version(gateway: Gateway, start_nginx_in_front: StartNginx) -> None:
    nginx = start_nginx_in_front([address(gateway)])
    async with aiohttp.ClientSession() as http:
        async with http.get(nginx.url + "/health") as response:
            await response.read()
    assert response.status == 200
    assert response.headers.getall("Server") == ["nginx"]


async def test_nginx_logs_a_path_without_its_query(gateway: Gateway, start_nginx_in_front: StartNginx) -> None:
    # Its default log had the whole request line: a browser token, or a one-step GET's prompt.
    nginx = start_nginx_in_front([address(gateway)])
    async with aiohttp.ClientSession() as http:
        async with http.get(nginx.url + "/chat/stream", params={"message": "private words\n#sim tokens=1"}) as response:
            await response.read()
    assert response.status == 200
    deadline = time.monotonic() + 10  # nginx writes the line as it finishes the request: at once
    while "/chat/stream" not in (logged := nginx.access_log.read_text()):
        assert time.monotonic() < deadline, logged
        await asyncio.sleep(0.01)  # the pace of a poll of the file, not a synchronisation
    assert '"GET /chat/stream HTTP/1.1" 200' in logged
    assert "private" not in logged


async def test_nginx_keeps_one_idle_connection_to_the_instance_across_requests(
    gateway: Gateway, start_nginx_in_front: StartNginx
) -> None:
    nginx = start_nginx_in_front([address(gateway)])
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.post(nginx.url + "/chat/stream", json={"message": "hi"}) as response:
                assert b"event: done" in await response.read()
    nginx_pids = {nginx.process.pid, *(child.pid for child in psutil.Process(nginx.process.pid).children())}
    port = int(gateway.url.rsplit(":", 1)[1])
    from_nginx = [
        conn
        for conn in psutil.Process(gateway.process.pid).net_connections("tcp")
        if conn.laddr.port == port and conn.status == psutil.CONN_ESTABLISHED
    ]
    nginx_ends = {
        (conn.laddr.port)
        for pid in nginx_pids
        for conn in psutil.Process(pid).net_connections("tcp")
        if conn.raddr and conn.raddr.port == port and conn.status == psutil.CONN_ESTABLISHED
    }
    # Three requests, one connection: nginx reused it (HTTP/1.1 keep-alive) instead of closing it.
    assert len(from_nginx) == 1
    assert {conn.raddr.port for conn in from_nginx} == nginx_ends


class LiveStream:
    """A native stream read through nginx a little at a time, with one parser for all of it."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self._parser = SSEParser()

    async def until_token(self) -> None:
        async for chunk in self.response.content.iter_any():
            if any(event.event == "token" for event in self._parser.feed(chunk)):
                return
        raise AssertionError("the stream ended before its first token")

    async def rest(self) -> list[Event]:
        events: list[Event] = []
        async for chunk in self.response.content.iter_any():
            events.extend(event for event in self._parser.feed(chunk) if event.comment is None)
        return events


async def open_stream(http: aiohttp.ClientSession, url: str, rid: str) -> LiveStream:
    response = await http.post(
        url + "/chat/stream", json={"message": "long\n#sim tokens=100000 gap_ms=20"}, headers={"X-Request-ID": rid}
    )
    assert response.status == 200
    stream = LiveStream(response)
    await stream.until_token()
    return stream


async def test_sigterm_to_one_instance_ends_its_streams_explicitly_while_nginx_serves_from_the_other(
    two_gateways: tuple[Gateway, Gateway], start_nginx_in_front: StartNginx
) -> None:
    draining, staying = two_gateways
    nginx = start_nginx_in_front([address(draining), address(staying)])
    async with aiohttp.ClientSession() as http:
        # nginx takes turns: of four streams, two are on each instance.
        streams = {rid: await open_stream(http, nginx.url, rid) for rid in (new_request_id("live") for _ in range(4))}
        draining.process.signal(signal.SIGTERM)
        draining.process.wait_for_event("drain_started", live=2)
        # While it drains (config/test.toml: 3 s), nginx answers every new request from the other.
        for n in range(6):
            async with http.post(nginx.url + "/chat/stream", json={"message": f"while draining {n}"}) as response:
                assert response.status == 200, await response.text()
                assert b"event: done" in await response.read()
        assert draining.process.wait(20) == 0
        ended = {e["request_id"] for e in draining.process.events("request_finished")} & set(streams)
        assert len(ended) == 2
        for rid in ended:
            events = await asyncio.wait_for(streams[rid].rest(), 10)
            assert events[-1].event == "failed"
            assert events[-1].json()["error"]["code"] == "server_shutting_down"
        for rid in set(streams) - ended:
            streams[rid].response.close()
    assert staying.process.events("drain_started") == []


async def test_503_answers_never_make_nginx_mark_the_instances_down(
    two_gateways: tuple[Gateway, Gateway], start_nginx_in_front: StartNginx
) -> None:
    """A 503 holding for every instance (here an upstream's overload; also Redis down, an open shared
    breaker) is tried on each instance and answered: the requests after it are served, not met
    with nginx's own 502 for instances it marked down."""
    first, second = two_gateways
    nginx = start_nginx_in_front([address(first), address(second)])
    async with aiohttp.ClientSession() as http:
        for n in range(2):
            overloaded = body("openai", f"overloaded {n}\n#sim fault=overloaded")
            async with http.post(nginx.url + ROUTES["openai"], json=overloaded) as response:
                assert response.status == 503
                assert (await response.json())["error"]["code"] == "overloaded"
        async with http.post(nginx.url + "/chat", json={"message": "after the overloads"}) as response:
            assert response.status == 200, await response.text()
