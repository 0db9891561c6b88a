"""The dashboard's numbers (server/dashboard.py) and its routes, in-process on the simulated model."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import sys
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.dashboard import DashboardFeeds, Frames, Sample, Viewer, Window, quantile, take_sample
from server.keys import LIFECYCLE
from server.metrics import Metrics
from server.routes import dashboard as dashboard_routes
from server.routes.dashboard import upstreams
from server.routes.page import CONTENT_SECURITY_POLICY
from tests.conftest import make_settings
from tests.support.client import new_request_id
from tests.support.envelope import error_of
from tests.support.processes import ManagedProcess, Simulator, clean_env, free_port, start_gateway
from tests.test_operations import distinct_pids

Client = TestClient[web.Request, web.Application]


async def next_snapshot(response: aiohttp.ClientResponse) -> dict[str, Any]:
    """Read the feed up to its next `snapshot` event."""
    event = None
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: ") and event == "snapshot":
            data: dict[str, Any] = json.loads(line.removeprefix("data: "))
            return data
    raise AssertionError("the feed ended before a snapshot")


def test_quantile_interpolates_within_a_bucket_as_prometheus_does() -> None:
    # 10 observations <= 0.1 s, 10 more <= 0.2 s: the median is the top of the first bucket,
    # p75 halfway through the second.
    buckets = [(0.1, 10.0), (0.2, 20.0), (float("inf"), 20.0)]

    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.75, buckets) == pytest.approx(0.15)


def test_quantile_of_no_observations_is_none() -> None:
    assert quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None


def test_quantile_in_the_overflow_bucket_is_the_highest_finite_bound() -> None:
    assert quantile(0.99, [(0.1, 1.0), (float("inf"), 100.0)]) == 0.1


def test_a_sample_reads_the_gateway_metrics_by_name() -> None:
    metrics = Metrics()
    metrics.child(metrics.requests, "/chat", "POST", "200").inc(3)
    metrics.child(metrics.requests, "/chat", "POST", "400").inc()
    metrics.child(metrics.ttft, "/chat/stream").observe(0.2)
    metrics.child(metrics.tokens, "gpt-4o", "completion").inc(40)
    metrics.child(metrics.tokens, "gpt-4o", "prompt").inc(7)
    metrics.child(metrics.upstream_errors, "502", "upstream_server_error").inc()
    metrics.child(metrics.stream_endings, "/chat/stream", "client_disconnected").inc(2)
    metrics.live_streams.inc(5)

    sample = take_sample(metrics, at=1.0)

    assert sample.requests == 4
    assert sample.errors_by_status == {"400": 1}
    assert sample.completion_tokens == 40
    assert sample.live_streams == 5
    assert sample.errors_by_code == {"upstream_server_error": 1}
    assert sample.endings == {"client_disconnected": 2}
    assert dict(sample.ttft_buckets)[0.25] == 1
    assert dict(sample.ttft_buckets)[0.1] == 0


def test_a_snapshot_gives_rates_over_the_window_and_totals_since_start() -> None:
    window = Window(seconds=10)
    window.add(Sample(at=100.0, requests=10, completion_tokens=100, ttft_buckets=((0.1, 4.0), (0.5, 4.0))))
    window.add(
        Sample(
            at=102.0,
            requests=30,
            completion_tokens=500,
            ttft_buckets=((0.1, 4.0), (0.5, 14.0)),
            endings={"client_disconnected": 3, "completed": 27},
        )
    )

    snapshot = window.snapshot()

    assert snapshot["requests_per_second"] == 10.0
    assert snapshot["tokens_per_second"] == 200.0
    assert snapshot["requests_total"] == 30
    assert snapshot["disconnects"] == 3
    # Only the 10 first tokens of the window count, all between 0.1 and 0.5 s.
    assert snapshot["ttft_ms"]["p50"] == pytest.approx(300.0)


def test_the_window_forgets_samples_older_than_its_length() -> None:
    window = Window(seconds=10)
    for second in range(30):
        window.add(Sample(at=float(second), requests=float(second * 2)))

    snapshot = window.snapshot()

    assert snapshot["window_seconds"] <= 10
    assert snapshot["requests_per_second"] == 2.0


async def test_the_upstream_table_shows_no_credential_from_the_base_urls_query(aiohttp_client: Any) -> None:
    environ = {
        "AI_INTEGRATIONS_OPENAI_API_KEY": "sk-test-key-never-logged",
        "AI_INTEGRATIONS_OPENAI_BASE_URL": "https://upstream.example:8443/v1?api-key=hidden",
    }
    client: Client = await aiohttp_client(create_app(make_settings(environ)))

    table = await upstreams(client.app)

    assert table.rows == [("default", "https://upstream.example:8443/v1", "closed", 0, None)]


async def test_the_dashboard_page_is_served_under_the_strict_policy(client: Client) -> None:
    response = await client.get("/dashboard")

    assert response.status == 200
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    page = await response.text()
    assert '<script src="/static/dashboard.js" defer></script>' in page
    assert "<script>" not in page
    assert "style=" not in page
    for name in ("sse.js", "dashboard.js", "dashboard.css"):
        assert (await client.get(f"/static/{name}")).status == 200


async def test_the_feed_sends_a_snapshot_at_once_with_every_panel(client: Client) -> None:
    response = await client.get("/dashboard/feed")

    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    snapshot = await next_snapshot(response)
    assert set(snapshot) >= {
        "live_streams",
        "requests_per_second",
        "tokens_per_second",
        "ttft_ms",
        "errors_by_code",
        "errors_by_status",
        "disconnects",
        "tables",
    }
    (upstreams,) = snapshot["tables"]
    assert upstreams["id"] == "upstreams"
    assert upstreams["rows"][0][0] == "default"
    assert upstreams["rows"][0][2] == "closed"
    response.close()


async def test_the_feed_counts_traffic_in_its_next_snapshots(client: Client) -> None:
    feed = await client.get("/dashboard/feed")
    before = await next_snapshot(feed)

    stream = await client.post("/chat/stream", json={"message": "#sim tokens=5\nhi"})
    await stream.read()
    missing = await client.post("/chat", json={"message": "hi", "model": "gpt-2"})
    await missing.read()
    after = await next_snapshot(feed)
    while after["requests_total"] < before["requests_total"] + 2:  # a tick may have raced the requests
        after = await next_snapshot(feed)

    assert after["requests_per_second"] > 0
    assert after["tokens_per_second"] > 0
    assert after["ttft_ms"]["p50"] is not None
    assert after["errors_by_status"] == {"404": 1}
    feed.close()


async def test_the_feed_ends_when_the_process_drains(client: Client) -> None:
    feed = await client.get("/dashboard/feed")
    await next_snapshot(feed)

    client.app[LIFECYCLE].draining = True

    async with asyncio.timeout(10):  # unrelated bound: the feed ends within a tick
        rest = await feed.content.read()  # returns once the gateway ends the response
    assert rest.count(b"event: snapshot") <= 1


async def test_the_feed_of_any_worker_counts_the_streams_of_every_worker(simulator: Simulator) -> None:
    port = free_port()
    env = clean_env({"AI_INTEGRATIONS_OPENAI_API_KEY": "sk-x", "AI_INTEGRATIONS_OPENAI_BASE_URL": simulator.base_url})
    argv = [sys.executable, "run.py", "--port", str(port), "--config", "config/test.toml", "--workers", "2"]
    supervisor = ManagedProcess(argv, env).start()
    url = f"http://127.0.0.1:{port}"
    try:
        supervisor.wait_for_line(lambda _: len(supervisor.events("sluice_listening")) >= 2)
        assert len(await distinct_pids(url, want=2)) == 2
        fresh = aiohttp.TCPConnector(force_close=True)  # a new connection each time: the kernel spreads them
        async with aiohttp.ClientSession(connector=fresh) as http:
            for _ in range(8):
                async with http.post(url + "/chat/stream", json={"message": "w\n#sim tokens=2"}) as response:
                    await response.read()
            async with http.get(url + "/dashboard/feed") as feed:
                snapshot = await next_snapshot(feed)
                # A stream's ending is counted just after its body's end reached the client: the
                # next snapshot (one a second) has it. Bounded: one worker's own view never gets there.
                async with asyncio.timeout(10):
                    while snapshot["endings"]["completed"] < 8:
                        snapshot = await next_snapshot(feed)
        # Eight streams spread over two workers: one worker's own view would (almost surely) miss some.
        assert snapshot["endings"]["completed"] == 8
    finally:
        supervisor.stop()


async def test_the_feed_needs_the_metrics_key_when_one_is_set(aiohttp_client: Any) -> None:
    settings = make_settings(auth={"metrics_key_sha256": hashlib.sha256(b"metrics-key-for-tests").hexdigest()})
    client: Client = await aiohttp_client(create_app(settings))

    refused = await client.get("/dashboard/feed")
    wrong = await client.get("/dashboard/feed", headers={"Authorization": "Bearer not-the-key"})
    feed = await client.get("/dashboard/feed", headers={"Authorization": "Bearer metrics-key-for-tests"})

    assert refused.status == 401
    assert wrong.status == 401
    assert feed.status == 200
    assert "requests_total" in await next_snapshot(feed)
    feed.close()


KEY_A, KEY_B = "sk-dashboard-key-a-0123456789", "sk-dashboard-key-b-0123456789"


def two_keys() -> dict[str, Any]:
    return {
        "keys": [
            {"name": name, "key_sha256": hashlib.sha256(key.encode()).hexdigest(), "rpm": 10, "max_streams": 2}
            for name, key in (("team-a", KEY_A), ("team-b", KEY_B))
        ]
    }


async def test_the_keys_table_counts_each_keys_requests_by_name_and_never_shows_a_key(aiohttp_client: Any) -> None:
    client: Client = await aiohttp_client(create_app(make_settings({"SLUICE_AUTH_SECRET": "s"}, auth=two_keys())))
    stream = await client.post(
        "/chat/stream", json={"message": "#sim tokens=2\nhi"}, headers={"Authorization": f"Bearer {KEY_A}"}
    )
    await stream.read()
    assert stream.status == 200

    feed = await client.get("/dashboard/feed")
    snapshot = await next_snapshot(feed)
    feed.close()

    rows = {row[0]: row for table in snapshot["tables"] if table["id"] == "keys" for row in table["rows"]}
    assert rows["team-a"][2] == "1 / 10"
    assert rows["team-a"][3] == rows["team-b"][3] == "no limit"  # tpm 0
    assert rows["team-b"][1:] == ["0 / 2", "0 / 10", "no limit"]
    text = json.dumps(snapshot)
    for secret in (KEY_A, KEY_B, *(key["key_sha256"] for key in two_keys()["keys"])):
        assert secret not in text


async def test_without_gateway_keys_the_feed_has_no_keys_table(client: Client) -> None:
    feed = await client.get("/dashboard/feed")
    snapshot = await next_snapshot(feed)
    feed.close()

    assert [table["id"] for table in snapshot["tables"]] == ["upstreams"]


async def test_two_open_feeds_are_served_from_one_sample_a_tick(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each sample counts the samples taken so far, and a snapshot's requests_total shows which one it
    # was built from: feeds sampling on their own would each see other numbers, never the same ones.
    taken = itertools.count(1)
    monkeypatch.setattr(dashboard_routes, "take_sample", lambda metrics, at: Sample(at=at, requests=next(taken)))
    first = await client.get("/dashboard/feed")
    second = await client.get("/dashboard/feed")

    joined = (await next_snapshot(second))["requests_total"]  # the latest snapshot, sent at once
    seen = (await next_snapshot(first))["requests_total"]
    while seen < joined:
        seen = (await next_snapshot(first))["requests_total"]
    assert seen == joined
    then_first = [(await next_snapshot(first))["requests_total"] for _ in range(2)]
    then_second = [(await next_snapshot(second))["requests_total"] for _ in range(2)]

    assert then_first == then_second == [joined + 1, joined + 2]  # and no sample taken in between
    first.close()
    second.close()


async def test_a_feed_over_the_cap_gets_503_with_retry_after_in_the_error_shape(aiohttp_client: Any) -> None:
    settings = make_settings(dashboard={"max_feeds": 1})
    client: Client = await aiohttp_client(create_app(settings))
    feed = await client.get("/dashboard/feed")
    await next_snapshot(feed)

    refused = await client.get("/dashboard/feed")

    assert refused.status == 503  # before reading the body: a feed's never ends
    error = await error_of(refused, 503)
    assert error["type"] == "server_error"
    assert error["code"] == "overloaded"
    assert refused.headers["Retry-After"] == str(settings.server.retry_after)
    feed.close()


async def test_a_viewer_leaving_frees_its_place(aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    client: Client = await aiohttp_client(create_app(make_settings(dashboard={"max_feeds": 1})))
    left = asyncio.Event()
    leave = Viewer.leave

    def leave_and_tell(viewer: Viewer) -> None:
        leave(viewer)
        left.set()

    monkeypatch.setattr(Viewer, "leave", leave_and_tell)
    feed = await client.get("/dashboard/feed")
    await next_snapshot(feed)

    feed.close()
    async with asyncio.timeout(10):  # unrelated bound: aiohttp cancels the handler of a client that left
        await left.wait()
    again = await client.get("/dashboard/feed")

    assert again.status == 200
    assert "requests_total" in await next_snapshot(again)
    again.close()


async def test_a_producer_that_failed_is_started_again_for_the_next_viewer() -> None:
    # One that failed while a viewer still watched stayed in place: every later feed ended at once.
    runs: list[int] = []

    async def produce(publish: Any) -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise RuntimeError("the first producer fails")
        publish(Frames(b"first", b"later"))
        await asyncio.Event().wait()

    feeds = DashboardFeeds(produce, max_viewers=4, retry_after=1)
    staying = feeds.join()
    assert await feeds.newer(0) is None  # the first producer failed: its viewers' feeds end
    joining = feeds.join()
    assert await asyncio.wait_for(feeds.newer(0), 5) == (1, Frames(b"first", b"later"))
    assert runs == [0, 1]
    joining.leave()
    staying.leave()
    await feeds.close()


async def test_a_viewer_that_disconnects_from_run_py_frees_its_place(simulator: Simulator) -> None:
    # The same as above on a real process (web.run_app, not the test client): the place comes back
    # once the feed's request has ended, which its access line marks.
    gateway = start_gateway(upstream=simulator, env={"SLUICE_DASHBOARD_MAX_FEEDS": "1"})
    rid = new_request_id("feed-leaves")
    try:
        async with aiohttp.ClientSession() as http:
            feed = await http.get(gateway.url + "/dashboard/feed", headers={"X-Request-ID": rid})
            assert feed.status == 200
            await next_snapshot(feed)
            async with http.get(gateway.url + "/dashboard/feed") as refused:
                assert refused.status == 503
            feed.close()
            # In a thread: the close itself happens on this loop, which must go on running.
            await asyncio.to_thread(gateway.process.wait_for_event, "request_finished", request_id=rid)
            async with http.get(gateway.url + "/dashboard/feed") as again:
                assert again.status == 200
                assert "requests_total" in await next_snapshot(again)
    finally:
        gateway.process.stop()
