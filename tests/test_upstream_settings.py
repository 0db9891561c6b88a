"""Settings of the upstream side: [[upstreams]] and [routing] in a --config file, keys from variables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from server.cli import warn_if_proxy_ignored
from server.settings import SettingsError, load_settings
from tests.conftest import make_settings

POOL = """
[[upstreams]]
name = "a"
base_url = "https://a.example/v1"
api_key_env = "A_KEY"
models = ["gpt-4o"]
weight = 2

[[upstreams]]
name = "b"
base_url = "https://b.example/v1"

[routing]
fallbacks = { "gpt-4o" = ["gpt-4o-mini"] }
context_window_fallbacks = { "gpt-4o-mini" = ["gpt-4.1"] }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sluice.toml"
    path.write_text(text)
    return path


def test_a_config_file_declares_upstreams_and_routing(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, POOL), environ={"A_KEY": "sk-a"})

    a, b = settings.upstream_entries()
    assert (a.name, a.weight, a.models) == ("a", 2, ("gpt-4o",))
    assert a.api_key is not None
    assert a.api_key.get_secret_value() == "sk-a"
    assert b.api_key is None
    assert b.serves("anything")
    assert settings.routing.fallbacks == {"gpt-4o": ("gpt-4o-mini",)}
    assert settings.routing.context_window_fallbacks == {"gpt-4o-mini": ("gpt-4.1",)}
    assert not settings.simulated


def test_a_key_written_in_the_file_is_refused(tmp_path: Path) -> None:
    text = '[[upstreams]]\nname = "a"\nbase_url = "https://a.example/v1"\napi_key = "sk-in-a-file"\n'
    with pytest.raises(SettingsError) as caught:
        load_settings(write(tmp_path, text), environ={})
    assert "api_key_env" in str(caught.value)
    assert "sk-in-a-file" not in str(caught.value)


def test_a_key_variable_that_is_not_set_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(write(tmp_path, POOL), environ={})
    assert "A_KEY" in str(caught.value)


def test_two_upstreams_with_one_name_are_refused(tmp_path: Path) -> None:
    one = '[[upstreams]]\nname = "a"\nbase_url = "https://a.example/v1"\n'
    with pytest.raises(SettingsError):
        load_settings(write(tmp_path, one + one), environ={})


def test_without_upstreams_the_integration_variables_are_the_upstream_named_default() -> None:
    settings = load_settings(
        environ={"AI_INTEGRATIONS_OPENAI_API_KEY": "sk-x", "AI_INTEGRATIONS_OPENAI_BASE_URL": "http://h/v1"}
    )

    (entry,) = settings.upstream_entries()
    assert (entry.name, entry.base_url, entry.models) == ("default", "http://h/v1", ("*",))
    assert entry.api_key is not None


def test_routing_numbers_come_from_the_environment_too() -> None:
    settings = load_settings(environ={"SLUICE_ROUTING_RETRIES": "4", "SLUICE_UPSTREAM_HEADER_TIMEOUT": "7"})

    assert settings.routing.retries == 4
    assert settings.upstream.header_timeout == 7


def test_the_defaults_retry_twice_within_ten_seconds_and_wait_30_s_idle() -> None:
    settings = load_settings(environ={})

    assert (settings.routing.retries, settings.routing.retry_budget_seconds) == (2, 10)
    assert (settings.upstream.header_timeout, settings.upstream.idle_timeout) == (60, 30)


def test_a_bad_upstream_entry_is_named_by_its_place_in_the_file(tmp_path: Path) -> None:
    text = '[[upstreams]]\nname = "a"\nbase_url = "ftp://a.example"\n'
    with pytest.raises(SettingsError) as caught:
        load_settings(write(tmp_path, text), environ={})
    assert str(caught.value).startswith("setting upstreams.0.base_url:")
    assert "environment" not in str(caught.value)


# --- proxy variables, which Sluice does not read ------------------------------------------------

UPSTREAM_KEY = {
    "AI_INTEGRATIONS_OPENAI_API_KEY": "sk-proxy-test",
    "AI_INTEGRATIONS_OPENAI_BASE_URL": "https://up.example/v1",
}


def proxy_warnings(environ: dict[str, str], settings_environ: dict[str, str] = UPSTREAM_KEY) -> list[Any]:
    """The start-up warnings about proxy variables for `environ`."""
    with capture_logs() as logs:
        warn_if_proxy_ignored(make_settings(settings_environ), environ)
    return [entry for entry in logs if entry["event"] == "upstream_proxy_ignored"]


def test_a_proxy_variable_set_for_an_upstream_is_warned_about_by_name_never_by_value() -> None:
    [warning] = proxy_warnings({"HTTPS_PROXY": "http://user:hunter2@proxy.corp:3128"})

    assert (warning["variables"], warning["upstreams"]) == (["HTTPS_PROXY"], ["default"])
    assert "hunter2" not in repr(warning)


def test_an_upstream_listed_in_no_proxy_is_not_warned_about() -> None:
    assert proxy_warnings({"https_proxy": "http://proxy.corp:3128", "NO_PROXY": "localhost,.example"}) == []


def test_no_proxy_variable_no_warning() -> None:
    assert proxy_warnings({"NO_PROXY": "*"}) == []


def test_the_built_in_simulated_model_is_not_warned_about() -> None:
    assert proxy_warnings({"HTTPS_PROXY": "http://proxy.corp:3128"}, settings_environ={}) == []
