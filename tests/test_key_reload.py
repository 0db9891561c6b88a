"""SIGHUP reloads the gateway keys from the configuration file, against `python run.py` and the simulator.

The keyed gateway's configuration (tests/support/security.py) is rewritten, the process gets
SIGHUP, and the test waits for its log line before asking again: a removed key is refused from
then on, the others still work, and a configuration that does not load changes nothing. A browser
token lives as long as the key that minted it keeps its hash, and so does a key's hold on the
browser streams it started: the key rotated in under its name neither reads nor stops them.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.client import new_request_id, sim_wait
from tests.support.processes import Gateway, Simulator
from tests.support.security import KEY_ALPHA, KEY_NARROW, METRICS_KEY, bearer, keys_toml, sha256, start_keyed_gateway

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


async def live_streams(http: aiohttp.ClientSession, gateway: Gateway) -> float:
    """`sluice_live_streams` now: a detached generation counts while it runs."""
    async with http.get(gateway.url + "/metrics", headers=bearer(METRICS_KEY)) as r:
        text = await r.text()
    match = re.search(r"^sluice_live_streams(?:\{[^}]*\})? (\S+)$", text, re.MULTILINE)
    assert match is not None, text
    return float(match.group(1))


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


async def test_a_key_rotated_on_sighup_cannot_stop_the_stream_its_predecessor_started(
    keyed: Gateway, simulator: Simulator, tmp_path: Path
) -> None:
    rid = new_request_id("rotated-stop")
    async with aiohttp.ClientSession() as http:
        path = await start_stream(http, keyed, KEY_ALPHA, "long\n#sim tokens=100000 gap_ms=20", rid)
        await sim_wait(http, simulator.url, rid, "opened")  # its generation runs, and is counted
        rotate_alpha(keyed, tmp_path)
        async with http.delete(keyed.url + path, headers=bearer(KEY_ALPHA_ROTATED)) as r:
            assert r.status == 204
        # A stop answers once the generation ended: it still runs.
        assert await live_streams(http, keyed) == 1


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
