"""A refused section names the source that made it wrong: the --config file or the variable, not default.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.settings import SettingsError, load_settings


def refusal(config: Path, **environ: str) -> str:
    with pytest.raises(SettingsError) as caught:
        load_settings(config, environ=environ)
    return str(caught.value)


def test_a_section_a_config_file_replaces_with_a_value_is_blamed_on_that_file(tmp_path: Path) -> None:
    config = tmp_path / "mine.toml"
    config.write_text("server = 5\n")

    message = refusal(config)

    assert message.startswith("setting server: ")
    assert message.endswith(f"(from --config file {config})")


def test_a_section_replaced_in_a_file_and_set_in_the_environment_is_refused_not_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "mine.toml"
    config.write_text("server = 5\n")

    message = refusal(config, SLUICE_SERVER_BACKLOG="5")

    assert message.startswith("setting server: ")
    assert message.endswith(f"(from --config file {config})")


def test_a_section_refused_whole_is_blamed_on_the_config_file_that_set_it(tmp_path: Path) -> None:
    config = tmp_path / "mine.toml"
    config.write_text('[models]\ndefault = "not-listed"\n')

    message = refusal(config)

    assert message.startswith("setting models: models.default is neither in models.available")
    assert message.endswith(f"(from --config file {config})")


def test_two_upstreams_of_one_name_are_refused_naming_the_setting_and_the_file(tmp_path: Path) -> None:
    config = tmp_path / "mine.toml"
    entry = '[[upstreams]]\nname = "same"\nbase_url = "http://127.0.0.1:9/v1"\n'
    config.write_text(entry + entry)

    message = refusal(config)

    assert message == f"setting upstreams: every [[upstreams]] entry needs its own name (from --config file {config})"
