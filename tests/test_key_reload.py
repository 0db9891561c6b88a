"""SIGHUP reloads the gateway keys from the configuration file, against `python run.py` and the simulator.

The keyed gateway's configuration (tests/support/security.py) is rewritten, the process gets
SIGHUP, and the test waits for its log line before asking again: a removed key is refused from
then on, the others still work, and a configuration that does not load changes nothing. A browser
token lives as long as the key that minted it keeps its hash, and so does a key's hold on the
browser streams it started: the key rotated in under its name does not read them. What runs
under a removed or rotated key ends at once, with `key_revoked`.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.client import ROUTES, new_request_id, sim_wait
from tests.support.processes import Gateway, Simulator
from tests.support.security import (
    KEY_ALPHA,
    KEY_FROM_ENV,
    KEY_NARROW,
    METRICS_KEY,
    bearer,
    body_awaited,
    keys_toml,
    sha256,
    start_keyed_gateway,
)
from tests.support.sse import Event, carries_token, iter_events

pytestmark = pytest.mark.timeout(60)

# The keys that take over alpha's and narrow's names when a test rotates them.
KEY_ALPHA_ROTATED = "sk-gw-alpha-rotated-6d5c4b3a2f1e0d9c"
KEY_NARROW_ROTATED = "sk-gw-narrow-rotated-3e2d1c0b9a8f7e6d"


@pytest.fixture
def keyed(simulator: Simulator, tmp_path: Path) -> Iterator[Gateway]:
    with start_keyed_gateway(tmp_path, simulator) as gateway:
        yield gateway


def reload_outcome(gateway: Gateway) -> dict[str, object]:
    """SIGHUP `gateway` and wait for its reload's log line, whichever it is."""
    outcomes = ("gateway_keys_reloaded", "gateway_keys_reload_failed")
    gateway.process.signal(signal.SIGHUP)
    gateway.process.wait_for_line(lambda _: any(gateway.process.events(name) for name in outcomes))
    (line,) = [e for e in gateway.process.events() if e.get("event") in outcomes]
    return line


async def status_with(gateway: Gateway, key: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(gateway.url + "/v1/models", headers=bearer(key)) as r:
        return r.status


async def one_step_token(gateway: Gateway, key: str) -> str:
    """A browser token for the one-step `GET /chat/stream`, minted with `key`."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(gateway.url + "/chat/stream/token", headers=bearer(key)) as r,
    ):
        assert r.status == 201
        return str((await r.json())["token"])


async def one_step_status(gateway: Gateway, token: str) -> int:
    """The status of a short one-step stream opened with `token` (read to its end)."""
    params = {"message": "hi\n#sim tokens=2", "token": token}
    async with aiohttp.ClientSession() as http, http.get(gateway.url + "/chat/stream", params=params) as r:
        await r.read()
        return r.status


def rewrite(tmp_path: Path, toml: str) -> None:
    """Replace the keyed gateway's configuration file (config/test.toml plus `toml`)."""
    config = tmp_path / "keys.toml"
    base = config.read_text().split("\n[auth]\n", 1)[0]
    config.write_text(base + toml)


async def test_a_key_removed_from_the_configuration_is_refused_after_sighup(keyed: Gateway, tmp_path: Path) -> None:
    assert await status_with(keyed, KEY_ALPHA) == 200
    rewrite(tmp_path, keys_toml(include_alpha=False))
    reloaded = reload_outcome(keyed)
    assert reloaded["event"] == "gateway_keys_reloaded"
    assert "alpha" not in str(reloaded["keys"])
    assert await status_with(keyed, KEY_ALPHA) == 401
    assert await status_with(keyed, KEY_NARROW) == 200


async def test_a_sighup_names_the_changed_sections_it_does_not_apply(keyed: Gateway, tmp_path: Path) -> None:
    # Only the keys were taken, and nothing said so: an operator saw gateway_keys_reloaded and
    # believed the new model list or limit was in force.
    rewrite(tmp_path, "\n[dashboard]\nmax_feeds = 7\n" + keys_toml())
    assert reload_outcome(keyed)["event"] == "gateway_keys_reloaded"
    (warning,) = keyed.process.events("settings_need_restart")
    assert warning["sections"] == ["dashboard"]


async def test_a_sighup_that_changes_only_keys_names_nothing_else(keyed: Gateway, tmp_path: Path) -> None:
    rewrite(tmp_path, keys_toml(include_alpha=False))
    assert reload_outcome(keyed)["event"] == "gateway_keys_reloaded"
    assert keyed.process.events("settings_need_restart") == []


async def test_a_token_minted_by_a_key_rotated_on_sighup_is_refused(keyed: Gateway, tmp_path: Path) -> None:
    token = await one_step_token(keyed, KEY_ALPHA)
    assert await one_step_status(keyed, token) == 200
    rewrite(tmp_path, keys_toml().replace(sha256(KEY_ALPHA), sha256(KEY_ALPHA_ROTATED)))
    assert reload_outcome(keyed)["event"] == "gateway_keys_reloaded"
    assert await one_step_status(keyed, token) == 401


async def test_a_token_outlives_a_sighup_that_left_its_key_alone(keyed: Gateway, tmp_path: Path) -> None:
    token = await one_step_token(keyed, KEY_ALPHA)
    # Another key is rotated: the ring is rebuilt, alpha's entry in it is as before.
    rewrite(tmp_path, keys_toml().replace(sha256(KEY_NARROW), sha256(KEY_NARROW_ROTATED)))
    assert reload_outcome(keyed)["event"] == "gateway_keys_reloaded"
    assert await one_step_status(keyed, token) == 200


async def start_stream(http: aiohttp.ClientSession, gateway: Gateway, key: str, message: str, rid: str = "") -> str:
    """POST /chat/streams with `key`; the new stream's path."""
    headers = {**bearer(key), **({"X-Request-ID": rid} if rid else {})}
    async with http.post(gateway.url + "/chat/streams", json={"message": message}, headers=headers) as r:
        assert r.status == 201, await r.text()
        return "/chat/streams/" + str((await r.json())["id"])


def rotate_alpha(gateway: Gateway, tmp_path: Path) -> None:
    """Give alpha's name another key's hash, and wait for the reload."""
    rewrite(tmp_path, keys_toml().replace(sha256(KEY_ALPHA), sha256(KEY_ALPHA_ROTATED)))
    assert reload_outcome(gateway)["event"] == "gateway_keys_reloaded"


async def test_a_stream_started_by_a_key_rotated_on_sighup_is_unknown_to_its_replacement(
    keyed: Gateway, tmp_path: Path
) -> None:
    async with aiohttp.ClientSession() as http:
        path = await start_stream(http, keyed, KEY_ALPHA, "hi\n#sim tokens=2")
        async with http.get(keyed.url + path, headers=bearer(KEY_ALPHA)) as r:
            assert r.status == 200
            await r.read()  # to its end: finished, and kept for its retention
        rotate_alpha(keyed, tmp_path)
        async with http.get(keyed.url + path, headers=bearer(KEY_ALPHA_ROTATED)) as r:
            answer = (r.status, await r.read())
    assert answer == (204, b"")


# A revoked key's streams end at once; their own deadlines are far away (total_timeout is 900 s,
# and the simulator sends a token every 20 ms, so no idle deadline trips either).
REVOKE_BOUND = 10.0
LONG = "long\n#sim tokens=100000 gap_ms=20"


def remove_alpha(gateway: Gateway, tmp_path: Path) -> None:
    """Drop alpha from the configuration, and wait for the reload."""
    rewrite(tmp_path, keys_toml(include_alpha=False))
    reloaded = reload_outcome(gateway)
    assert (reloaded["event"], reloaded["revoked"]) == ("gateway_keys_reloaded", ["alpha"])


async def open_stream(
    http: aiohttp.ClientSession, gateway: Gateway, simulator: Simulator, dialect: str, key: str, rid: str
) -> tuple[aiohttp.ClientResponse, AsyncIterator[Event]]:
    """A long stream of `dialect` on `key`, its first token read; the response and the rest of its events."""
    path, body = ROUTES[dialect]
    headers = {**bearer(key), "X-Request-ID": rid}
    response = await http.post(gateway.url + path, json=body(LONG), headers=headers)
    assert response.status == 200
    await sim_wait(http, simulator.url, rid, "opened")
    events = iter_events(response)
    async for event in events:
        if carries_token(event):
            break
    return response, events


ENDING = {"openai": "message", "native": "failed"}  # the event a failure ends each dialect with


@pytest.mark.parametrize("dialect", ["openai", "native"])
async def test_a_key_removed_on_sighup_ends_its_running_streams_with_key_revoked_and_spares_the_others(
    keyed: Gateway, simulator: Simulator, tmp_path: Path, dialect: str
) -> None:
    # Revoked, a key's streams went on generating (and billing the upstream) until total_timeout.
    revoked_rid, kept_rid = new_request_id("revoked"), new_request_id("kept")
    async with aiohttp.ClientSession() as http:
        revoked, revoked_events = await open_stream(http, keyed, simulator, dialect, KEY_ALPHA, revoked_rid)
        kept, kept_events = await open_stream(http, keyed, simulator, dialect, KEY_FROM_ENV, kept_rid)
        remove_alpha(keyed, tmp_path)
        async with asyncio.timeout(REVOKE_BOUND):
            ending = [event async for event in revoked_events if event.comment is None][-1]
            closed = await sim_wait(http, simulator.url, revoked_rid, "closed", seconds=REVOKE_BOUND)
            more = 0  # the other key's stream reads on: tokens keep coming after the revocation
            async for event in kept_events:
                more += carries_token(event)
                if more == 5:
                    break
        revoked.close()
        kept.close()
    logged = keyed.process.wait_for_event("request_finished", request_id=revoked_rid)
    error = ending.json()["error"]
    assert ending.event == ENDING[dialect]
    assert (error["code"], error["type"]) == ("key_revoked", "invalid_request_error")
    assert "revoked" in error["message"]
    assert closed["outcome"] == "client_aborted"  # its upstream request closed, not run to its end
    assert (logged["outcome"], logged["error_code"]) == ("rejected", "key_revoked")
    assert more == 5


async def test_a_key_rotated_on_sighup_ends_its_browser_streams_with_key_revoked(
    keyed: Gateway, simulator: Simulator, tmp_path: Path
) -> None:
    # Its tokens stopped working, but its detached generations ran on for their whole total_timeout.
    rid = new_request_id("rotated-browser")
    async with aiohttp.ClientSession() as http:
        async with http.post(
            keyed.url + "/chat/streams", json={"message": LONG}, headers={**bearer(KEY_ALPHA), "X-Request-ID": rid}
        ) as r:
            assert r.status == 201
            url = (await r.json())["url"]
        async with http.get(keyed.url + url) as reader:  # attached with its token before the rotation
            assert reader.status == 200
            events = iter_events(reader)
            async for event in events:
                if event.event == "token":
                    break
            rotate_alpha(keyed, tmp_path)
            async with asyncio.timeout(REVOKE_BOUND):
                ending = [event async for event in events if event.comment is None][-1]
                closed = await sim_wait(http, simulator.url, rid, "closed", seconds=REVOKE_BOUND)
    finished = keyed.process.wait_for_event("browser_stream_finished", request_id=rid)
    assert (ending.event, ending.json()["error"]["code"]) == ("failed", "key_revoked")
    assert closed["outcome"] == "client_aborted"
    assert (finished["outcome"], finished["error_code"]) == ("rejected", "key_revoked")  # as an attached stream's


async def test_a_request_of_a_key_revoked_before_its_answer_is_401_key_revoked(
    keyed: Gateway, simulator: Simulator, tmp_path: Path
) -> None:
    rid = new_request_id("revoked-waiting")
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x\n#sim fault=hang_first"}]}
    async with aiohttp.ClientSession() as http:
        waiting = asyncio.ensure_future(
            http.post(keyed.url + "/v1/chat/completions", json=body, headers={**bearer(KEY_ALPHA), "X-Request-ID": rid})
        )
        try:
            await sim_wait(http, simulator.url, rid, "opened")
            remove_alpha(keyed, tmp_path)
            async with asyncio.timeout(REVOKE_BOUND):
                answer = await waiting
                refused = (answer.status, (await answer.json())["error"]["code"])
        finally:
            waiting.cancel()
    assert refused == (401, "key_revoked")


async def test_a_request_whose_key_is_revoked_while_its_body_arrives_is_refused(keyed: Gateway, tmp_path: Path) -> None:
    # Authenticated before its body, it takes its key's limits after it: the key may be gone by then.
    body = b'{"message": "hi\\n#sim tokens=1"}'
    reader, writer = await body_awaited(keyed, KEY_ALPHA, len(body), REVOKE_BOUND)
    try:
        remove_alpha(keyed, tmp_path)
        writer.write(body)
        async with asyncio.timeout(REVOKE_BOUND):
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
            answer = await reader.readexactly(length)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 401 ")
    assert b'"code":"key_revoked"' in answer.replace(b" ", b"")


async def test_a_configuration_that_does_not_load_keeps_the_current_keys(keyed: Gateway, tmp_path: Path) -> None:
    rewrite(tmp_path, keys_toml(include_alpha=False) + "\n[auth\n")
    failed = reload_outcome(keyed)
    assert failed["event"] == "gateway_keys_reload_failed"
    assert "not valid TOML" in str(failed["message"])
    assert await status_with(keyed, KEY_ALPHA) == 200


async def test_a_reload_cannot_turn_the_keys_off(keyed: Gateway, tmp_path: Path) -> None:
    rewrite(tmp_path, "")
    failed = reload_outcome(keyed)
    assert failed["event"] == "gateway_keys_reload_failed"
    assert "needs a restart" in str(failed["message"])
    assert await status_with(keyed, "sk-anything") == 401
    assert await status_with(keyed, KEY_ALPHA) == 200


async def test_sighup_to_the_supervisor_reloads_every_worker(simulator: Simulator, tmp_path: Path) -> None:
    with start_keyed_gateway(tmp_path, simulator, args=("--workers", "2")) as gateway:
        supervisor = gateway.process
        supervisor.wait_for_line(lambda _: len(supervisor.events("sluice_listening")) >= 2)
        rewrite(tmp_path, keys_toml(include_alpha=False))
        supervisor.signal(signal.SIGHUP)
        supervisor.wait_for_line(lambda _: len(supervisor.events("gateway_keys_reloaded")) >= 2)
        reloads = supervisor.events("gateway_keys_reloaded")
        # Each request may land on either worker: every one of them refuses the removed key.
        statuses = {await status_with(gateway, KEY_ALPHA) for _ in range(8)}
    assert len({event["pid"] for event in reloads}) == 2
    assert statuses == {401}


async def test_a_configuration_that_is_not_utf8_keeps_the_current_keys(keyed: Gateway, tmp_path: Path) -> None:
    # It was asyncio's "Exception in callback reload_keys" traceback, not the reload's own log line.
    (tmp_path / "keys.toml").write_bytes(b"# \xff\n")
    failed = reload_outcome(keyed)
    assert failed["event"] == "gateway_keys_reload_failed"
    assert "not UTF-8 text" in str(failed["message"])
    assert await status_with(keyed, KEY_ALPHA) == 200


async def test_a_configuration_path_turned_into_a_directory_keeps_the_current_keys(
    keyed: Gateway, tmp_path: Path
) -> None:
    config = tmp_path / "keys.toml"
    config.unlink()
    config.mkdir()
    failed = reload_outcome(keyed)
    assert failed["event"] == "gateway_keys_reload_failed"
    assert "cannot be read" in str(failed["message"])
    assert await status_with(keyed, KEY_ALPHA) == 200


async def snapshots_after_reload(gateway: Gateway, tmp_path: Path, toml: str, wanted: int) -> int:
    """Open a dashboard feed with the metrics key, reload with `toml`, read until the feed ends or
    `wanted` more snapshots came (bounded); how many snapshots came after the reload."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(gateway.url + "/dashboard/feed", headers=bearer(METRICS_KEY)) as feed,
    ):
        assert feed.status == 200
        events = iter_events(feed)
        async with asyncio.timeout(REVOKE_BOUND):
            assert (await anext(events)).event == "snapshot"
            rewrite(tmp_path, toml)
            assert reload_outcome(gateway)["event"] == "gateway_keys_reloaded"
            after = 0
            async for event in events:
                after += event.event == "snapshot"
                if after == wanted:
                    break
        return after


async def test_a_metrics_key_rotated_on_sighup_ends_the_dashboard_feeds_it_opened(
    keyed: Gateway, tmp_path: Path
) -> None:
    # Rotated, the old key's feed went on showing key names and per-key traffic.
    rotated = keys_toml().replace(sha256(METRICS_KEY), sha256("sk-metrics-rotated-0a1b2c3d4e5f"))
    # One snapshot may already be on its way as the reload lands; the feed ends before a second.
    assert await snapshots_after_reload(keyed, tmp_path, rotated, wanted=3) <= 1


async def test_a_sighup_that_keeps_the_metrics_key_keeps_the_dashboard_feeds(keyed: Gateway, tmp_path: Path) -> None:
    assert await snapshots_after_reload(keyed, tmp_path, keys_toml(include_alpha=False), wanted=3) == 3
