"""SIGHUP reloads the gateway keys from the configuration file, against `python run.py` and the simulator.

The keyed gateway's configuration (tests/support/security.py) is rewritten, the process gets
SIGHUP, and the test waits for its log line before asking again: a removed key is refused from
then on, the others still work, and a configuration that does not load changes nothing.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.processes import Gateway, Simulator
from tests.support.security import KEY_ALPHA, KEY_NARROW, bearer, keys_toml, start_keyed_gateway

pytestmark = pytest.mark.timeout(60)


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
