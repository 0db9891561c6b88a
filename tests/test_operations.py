"""Running under an orchestrator: probes, graceful drain, workers and metrics, as real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Iterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.client import ROUTES, new_request_id, sim_wait
from tests.support.processes import Gateway, ManagedProcess, Simulator, clean_env, free_port, start_gateway
from tests.support.sse import Event, iter_events, tokens_text

DRAIN_TIMEOUT = 3.0  # config/test.toml


def metric_value(text: str, name: str, **labels: str) -> float:
    """One sample's value from a text exposition (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def open_stream(
    http: aiohttp.ClientSession, gateway: Gateway, dialect: str, message: str, rid: str
) -> aiohttp.ClientResponse:
    path, make_body = ROUTES[dialect]
    response = await http.post(gateway.url + path, json=make_body(message), headers={"X-Request-ID": rid})
    assert response.status == 200
    return response


async def collect(response: aiohttp.ClientResponse) -> list[Event]:
    try:
        return [event async for event in iter_events(response) if event.comment is None]
    finally:
        response.release()


def ending(events: list[Event], dialect: str) -> str:
    """How a stream ended, as its client saw it: done, shutdown, other failure, or cut."""
    if not events:
        return "cut"
    last = events[-1]
    if dialect == "native":
        if last.event == "done":
            return "done"
        if last.event == "failed":
            return "shutdown" if last.json()["error"]["code"] == "server_shutting_down" else "failed"
        return "cut"
    if last.data == "[DONE]":
        return "done"
    if last.data.startswith('{"error"'):
        return "shutdown" if last.json()["error"]["code"] == "server_shutting_down" else "failed"
    return "cut"


async def test_sigterm_drains_live_streams_and_exits_zero(simulator: Simulator) -> None:
    with start_gateway(upstream=simulator) as gateway:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            streams = []
            for i in range(50):
                dialect = "native" if i % 2 else "openai"
                # Half finish inside the drain window, half outlive it.
                pace = "tokens=10 gap_ms=100" if i < 25 else "tokens=1000 gap_ms=100"
                rid = new_request_id(f"drain-{i}")
                streams.append((dialect, rid, await open_stream(http, gateway, dialect, f"x\n#sim {pace}", rid)))
            readers = [asyncio.create_task(collect(response)) for _, _, response in streams]
            gateway.process.signal(signal.SIGTERM)
            await asyncio.to_thread(gateway.process.wait_for_event, "drain_started")

            async with http.get(gateway.url + "/readyz") as response:
                assert response.status == 503
                assert (await response.json())["status"] == "draining"
            async with http.post(gateway.url + "/chat/stream", json={"message": "late"}) as response:
                assert response.status == 503
                assert response.headers["Retry-After"] == "5"
                assert (await response.json())["error"]["code"] == "server_shutting_down"

            endings = [
                ending(events, dialect)
                for (dialect, _, _), events in zip(streams, await asyncio.gather(*readers), strict=False)
            ]
            for _, rid, _ in streams[25:]:
                assert (await sim_wait(http, simulator.url, rid, "closed"))["outcome"] == "client_aborted"
        code = await asyncio.to_thread(gateway.process.wait, DRAIN_TIMEOUT + 5)
    assert code == 0
    assert endings[:25] == ["done"] * 25
    assert endings[25:] == ["shutdown"] * 25


async def test_shutdown_event_tells_eventsource_when_to_come_back(simulator: Simulator) -> None:
    with start_gateway(upstream=simulator) as gateway:
        async with aiohttp.ClientSession() as http:
            response = await open_stream(http, gateway, "native", "x\n#sim tokens=1000 gap_ms=100", new_request_id("r"))
            reader = asyncio.create_task(collect(response))
            gateway.process.signal(signal.SIGTERM)
            events = await reader
    assert events[-1].event == "failed"
    assert events[-1].retry == 5000


async def test_readiness_reports_upstream_down_once_its_breaker_opens() -> None:
    closed = f"http://127.0.0.1:{free_port()}/v1"
    gateway = start_gateway(
        env={
            "AI_INTEGRATIONS_OPENAI_API_KEY": "sk-x",
            "AI_INTEGRATIONS_OPENAI_BASE_URL": closed,
            "SLUICE_ROUTING_BREAKER_FAILURES": "5",
        }
    )
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(gateway.url + "/readyz") as response:
                assert response.status == 200
            for _ in range(5):  # routing.breaker_failures
                async with http.post(gateway.url + "/chat/stream", json={"message": "hi"}) as response:
                    assert response.status == 502
            async with http.get(gateway.url + "/readyz") as response:
                assert response.status == 503
                assert (await response.json())["status"] == "upstream_down"
            async with http.get(gateway.url + "/livez") as response:
                assert response.status == 200
    finally:
        gateway.process.stop()


async def test_probes_write_no_info_log_lines(gateway: Gateway) -> None:
    rid = new_request_id("probe")
    async with aiohttp.ClientSession() as http:
        for path in ("/livez", "/readyz", "/health"):
            async with http.get(gateway.url + path, headers={"X-Request-ID": rid}) as response:
                assert response.status == 200
        async with http.get(gateway.url + "/models", headers={"X-Request-ID": rid}) as response:
            assert response.status == 200
    gateway.process.wait_for_event("request_finished", request_id=rid, path="/models")
    probes = [e for e in gateway.process.events("request_finished") if e.get("request_id") == rid]
    assert [e["path"] for e in probes] == ["/models"]


async def test_metrics_move_with_a_known_set_of_requests(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway.url + "/metrics") as response:
            before = await response.text()
        for _ in range(2):
            async with http.post(
                gateway.url + "/chat/stream", json={"message": "m\n#sim tokens=4 gap_ms=20"}
            ) as response:
                await response.read()
        async with http.post(gateway.url + "/chat/stream", json={"message": ""}) as response:
            assert response.status == 400
        async with http.post(gateway.url + "/chat/stream", json={"message": "x\n#sim fault=hang_first"}) as response:
            await sim_ready(response)
        async with http.post(gateway.url + "/chat/stream", json={"message": "x\n#sim fault=rate_limit"}) as response:
            assert response.status == 429
        async with http.post(gateway.url + "/chat/stream", json={"message": "x\n#sim tokens=4 fault=cut"}) as response:
            await response.read()
        async with http.get(gateway.url + "/metrics") as response:
            assert response.headers["Content-Type"].startswith("text/plain")
            after = await response.text()

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta("sluice_requests_total", route="/chat/stream", method="POST", status="200") == 4
    assert delta("sluice_requests_total", route="/chat/stream", method="POST", status="429") == 1
    assert delta("sluice_upstream_errors_total", status="429", code="rate_limit_exceeded") == 1
    assert delta("sluice_upstream_errors_total", status="200", code="upstream_stream_broken") == 1
    assert delta("sluice_requests_total", route="/chat/stream", method="POST", status="400") == 1
    assert delta("sluice_stream_endings_total", route="/chat/stream", outcome="completed") == 2
    assert delta("sluice_stream_endings_total", route="/chat/stream", outcome="client_disconnected") == 1
    assert delta("sluice_tokens_total", model="gpt-4o", kind="completion") == 8 + 2  # the cut stream relayed 2
    assert delta("sluice_time_to_first_token_seconds_count", route="/chat/stream") == 3
    # One gap per network read after the first: at most one per token after each stream's first.
    assert 0 < delta("sluice_chunk_gap_seconds_count", route="/chat/stream") <= 3 + 3 + 1
    assert metric_value(after, "sluice_live_streams") == metric_value(before, "sluice_live_streams")


async def sim_ready(response: aiohttp.ClientResponse) -> None:
    """Leave a stream whose upstream has not answered yet (the response headers are in)."""
    assert response.status == 200
    response.close()


async def test_the_live_streams_gauge_counts_a_stream_while_it_runs(gateway: Gateway) -> None:
    async def live(http: aiohttp.ClientSession) -> float:
        async with http.get(gateway.url + "/metrics") as response:
            return metric_value(await response.text(), "sluice_live_streams")

    async with aiohttp.ClientSession() as http:
        before = await live(http)
        async with http.post(gateway.url + "/chat/stream", json={"message": "m\n#sim tokens=3 gap_ms=300"}) as response:
            assert response.status == 200
            await asyncio.wait_for(response.content.readline(), 10)  # the stream is under way
            during = await live(http)
            await asyncio.wait_for(response.read(), 10)
        after = await live(http)
    assert during == before + 1
    assert after == before


async def test_heartbeats_are_counted(simulator: Simulator) -> None:
    with start_gateway(upstream=simulator, env={"SLUICE_STREAM_HEARTBEAT_INTERVAL": "0.1"}) as gateway:
        async with aiohttp.ClientSession() as http:
            async with http.post(gateway.url + "/chat/stream", json={"message": "x\n#sim tokens=2 ttft_ms=500"}) as r:
                comments = [e async for e in iter_events(r) if e.comment is not None]
            async with http.get(gateway.url + "/metrics") as response:
                text = await response.text()
    assert comments
    assert metric_value(text, "sluice_heartbeats_total") == len(comments)


async def test_two_workers_share_the_port_and_a_killed_one_is_replaced(simulator: Simulator) -> None:
    port = free_port()
    env = clean_env({"AI_INTEGRATIONS_OPENAI_API_KEY": "sk-x", "AI_INTEGRATIONS_OPENAI_BASE_URL": simulator.base_url})
    argv = [sys.executable, "run.py", "--port", str(port), "--config", "config/test.toml", "--workers", "2"]
    supervisor = ManagedProcess(argv, env).start()
    url = f"http://127.0.0.1:{port}"
    try:
        supervisor.wait_for_line(lambda _: _nth_listening(supervisor) >= 2)
        pids = await distinct_pids(url, want=2)
        assert len(pids) == 2
        victim = sorted(pids)[0]
        os.kill(victim, signal.SIGKILL)
        supervisor.wait_for_event("worker_died", worker_pid=victim)
        supervisor.wait_for_line(lambda _: _nth_listening(supervisor) >= 3)
        replacement = supervisor.events("worker_started")[-1]
        pids_after = await distinct_pids(url, want=2)
        assert victim not in pids_after
        assert replacement["worker_pid"] in pids_after
        async with aiohttp.ClientSession() as http:
            for _ in range(4):
                async with http.post(url + "/chat/stream", json={"message": "w\n#sim tokens=2"}) as response:
                    assert response.status == 200
                    await response.read()
            async with http.get(url + "/metrics") as response:
                text = await response.text()
        # Any worker's /metrics reports every worker: all four streams are counted.
        assert metric_value(text, "sluice_stream_endings_total", route="/chat/stream", outcome="completed") == 4
        supervisor.signal(signal.SIGTERM)
        assert await asyncio.to_thread(supervisor.wait, 20) == 0
    finally:
        supervisor.stop()


@pytest.fixture
def two_workers(simulator: Simulator) -> Iterator[str]:
    """`python run.py --workers 2` against the simulator; its URL once both workers listen."""
    port = free_port()
    env = clean_env({"AI_INTEGRATIONS_OPENAI_API_KEY": "sk-x", "AI_INTEGRATIONS_OPENAI_BASE_URL": simulator.base_url})
    argv = [sys.executable, "run.py", "--port", str(port), "--config", "config/test.toml", "--workers", "2"]
    supervisor = ManagedProcess(argv, env).start()
    try:
        supervisor.wait_for_line(lambda _: _nth_listening(supervisor) >= 2)
        yield f"http://127.0.0.1:{port}"
    finally:
        supervisor.stop()


async def test_a_browser_stream_is_readable_through_any_worker(two_workers: str) -> None:
    fresh = aiohttp.TCPConnector(force_close=True)  # every request on a new connection: any worker
    async with aiohttp.ClientSession(connector=fresh) as http:
        async with http.post(two_workers + "/chat/streams", json={"message": "w\n#sim tokens=5"}) as response:
            url = two_workers + (await response.json())["url"]
        bodies = []
        for _ in range(12):
            async with http.get(url) as response:
                assert response.status == 200
                bodies.append([e for e in await read_all(response) if e.comment is None])
        assert len(await distinct_pids(two_workers, want=2)) == 2  # two workers did answer
    texts = {tokens_text(events) for events in bodies}
    assert len(texts) == 1
    assert all(events[-1].event == "done" for events in bodies)


async def test_a_browser_stream_resumes_and_stops_through_any_worker(two_workers: str, simulator: Simulator) -> None:
    fresh = aiohttp.TCPConnector(force_close=True)
    rid = new_request_id("peer-stop")
    async with aiohttp.ClientSession(connector=fresh) as http:
        body = {"message": "w\n#sim tokens=100000 gap_ms=20"}
        async with http.post(two_workers + "/chat/streams", json=body, headers={"X-Request-ID": rid}) as response:
            started = await response.json()
        url = two_workers + started["url"]
        for _ in range(6):
            async with http.get(url, headers={"Last-Event-ID": f"{started['id']}:2"}) as response:
                events = []
                async for event in iter_events(response):
                    if event.comment is None and event.event == "token":
                        events.append(event)
                        break
            assert events[0].id == f"{started['id']}:3"  # exactly the event after the one named
        for _ in range(2):
            async with http.delete(url) as response:
                assert response.status == 204
        record = await sim_wait(http, simulator.url, rid, "closed")
    assert record["outcome"] == "client_aborted"


async def read_all(response: aiohttp.ClientResponse) -> list[Event]:
    return [event async for event in iter_events(response)]


def _nth_listening(process: ManagedProcess) -> int:
    return len(process.events("sluice_listening"))


async def distinct_pids(url: str, want: int, attempts: int = 200) -> set[int]:
    """Ask /livez over fresh connections until `want` different workers answered."""
    pids: set[int] = set()
    for _ in range(attempts):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            async with http.get(url + "/livez") as response:
                pids.add((await response.json())["pid"])
        if len(pids) >= want:
            break
    return pids


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_log_format_flag_chooses_console_or_json(fmt: str) -> None:
    argv = [sys.executable, "run.py", "--port", str(free_port()), "--config", "config/test.toml", "--log-format", fmt]
    process = ManagedProcess(argv, clean_env()).start()
    try:
        line = process.wait_for_line(lambda text: "sluice_listening" in text)
    finally:
        process.stop()
    assert line.startswith("{") == (fmt == "json")


@pytest.mark.timeout(60)
async def test_a_second_signal_ends_live_streams_at_once_with_the_shutdown_event(simulator: Simulator) -> None:
    """SIGTERM, then SIGTERM again: the live stream ends now with its shutdown event, not after the
    60 s drain, and the process exits 0.

    Catches: the second signal's "hurry" branch in server/contexts.py not calling `lifecycle.end_all()`.
    """
    far = {
        "SLUICE_SERVER_DRAIN_TIMEOUT": "60",
        "SLUICE_UPSTREAM_IDLE_TIMEOUT": "60",
        "SLUICE_UPSTREAM_TOTAL_TIMEOUT": "120",
        "SLUICE_STREAM_HEARTBEAT_INTERVAL": "60",
    }
    gateway = start_gateway(upstream=simulator, env=far)
    rid = new_request_id("hurry")
    try:
        async with aiohttp.ClientSession() as http:
            response = await open_stream(http, gateway, "native", "x\n#sim tokens=100000 gap_ms=20", rid)
            async for event in iter_events(response):
                if event.event == "token":
                    break
            gateway.process.signal(signal.SIGTERM)
            gateway.process.wait_for_event("drain_started")
            gateway.process.signal(signal.SIGTERM)
            events = await asyncio.wait_for(collect(response), 5)
        assert ending(events, "native") == "shutdown"
        assert await asyncio.to_thread(gateway.process.wait, 10) == 0
    finally:
        gateway.process.stop()


@pytest.mark.timeout(60)
async def test_a_stream_the_drain_ended_is_logged_with_the_error_code_its_client_received(simulator: Simulator) -> None:
    far = {"SLUICE_SERVER_DRAIN_TIMEOUT": "60", "SLUICE_UPSTREAM_IDLE_TIMEOUT": "60"}
    gateway = start_gateway(upstream=simulator, env=far)
    rid = new_request_id("drain-code")
    try:
        async with aiohttp.ClientSession() as http:
            response = await open_stream(http, gateway, "openai", "x\n#sim tokens=100000 gap_ms=20", rid)
            async for event in iter_events(response):
                if event.comment is None:
                    break
            gateway.process.signal(signal.SIGTERM)
            gateway.process.wait_for_event("drain_started")
            gateway.process.signal(signal.SIGTERM)  # the second signal ends it now, not after 60 s
            events = await asyncio.wait_for(collect(response), 5)
        assert await asyncio.to_thread(gateway.process.wait, 10) == 0
    finally:
        gateway.process.stop()
    (line,) = [e for e in gateway.process.events("request_finished") if e.get("request_id") == rid]
    assert line["outcome"] == "shutdown"
    assert line["error_code"] == events[-1].json()["error"]["code"] == "server_shutting_down"
