"""Settings of the upstream side: [[upstreams]] and [routing] in a --config file, keys from variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.settings import SettingsError, load_settings

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
