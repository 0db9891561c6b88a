"""A refused section names the source that made it wrong: the --config file or the variable, not default.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.settings import SettingsError, load_settings


def refusal(tmp_path: Path, toml: str, **environ: str) -> tuple[str, Path]:
    """The message that refuses a --config file holding `toml` (with `environ`), and that file."""
    config = tmp_path / "mine.toml"
    config.write_text(toml)
    with pytest.raises(SettingsError) as caught:
        load_settings(config, environ=environ)
    return str(caught.value), config


@pytest.mark.parametrize(
    ("toml", "environ", "start"),
    [
        pytest.param("server = 5\n", {}, "setting server: ", id="replaced_with_a_value"),
        # The file replaced the table the variable goes into: refused as the file's, not a traceback.
        pytest.param(
            "server = 5\n",
            {"SLUICE_SERVER_BACKLOG": "5"},
            "setting server: ",
            id="replaced_with_a_value_and_set_in_the_environment",
        ),
        pytest.param(
            '[models]\ndefault = "not-listed"\n',
            {},
            "setting models: models.default is neither in models.available",
            id="refused_whole",
        ),
    ],
)
def test_a_refused_section_is_blamed_on_the_config_file_that_set_it(
    tmp_path: Path, toml: str, environ: dict[str, str], start: str
) -> None:
    message, config = refusal(tmp_path, toml, **environ)

    assert message.startswith(start)
    assert message.endswith(f"(from --config file {config})")


def test_two_upstreams_of_one_name_are_refused_naming_the_setting_and_the_file(tmp_path: Path) -> None:
    entry = '[[upstreams]]\nname = "same"\nbase_url = "http://127.0.0.1:9/v1"\n'

    message, config = refusal(tmp_path, entry + entry)

    assert message == f"setting upstreams: every [[upstreams]] entry needs its own name (from --config file {config})"
