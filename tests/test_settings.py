"""Settings: defaults, environment overrides, the upstream key and URL, errors, secrecy, freezing."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from server.settings import Settings, SettingsError, load_settings
from server.settings.sections import MAX_SEND_TIMEOUT

KEY = "sk-proj-settings-test-1234567890"


def load(**environ: str) -> Settings:
    """config/default.toml with exactly `environ` as the environment."""
    return load_settings(environ=environ)


def settings_error(**environ: str) -> str:
    """The SettingsError message loading with `environ` raises."""
    with pytest.raises(SettingsError) as caught:
        load(**environ)
    return str(caught.value)


def test_defaults_load_with_gpt_4o_as_the_default_model() -> None:
    settings = load()

    assert settings.models.default == "gpt-4o"
    assert "gpt-4o" in settings.models.available


def test_default_model_list_advertises_only_gpt_4o_and_its_mini() -> None:
    assert load().models.available == ("gpt-4o", "gpt-4o-mini")


def test_a_star_model_list_loads_with_any_default() -> None:
    settings = load(SLUICE_MODELS_AVAILABLE="*", SLUICE_MODELS_DEFAULT="llama3.1:8b")

    assert settings.models.available == ("*",)
    assert settings.models.default == "llama3.1:8b"


def test_aliases_come_from_the_environment_as_name_model_pairs() -> None:
    settings = load(SLUICE_MODELS_ALIASES="fast=gpt-4o-mini, smart = gpt-4o")

    assert settings.models.aliases == {"fast": "gpt-4o-mini", "smart": "gpt-4o"}


def test_an_alias_to_a_model_not_available_is_refused() -> None:
    message = settings_error(SLUICE_MODELS_ALIASES="fast=gpt-2")

    assert message.startswith("setting models")
    assert "alias 1 of 1 names a model that is not in models.available" in message
    assert "gpt-2" not in message  # named by its place: a value is never echoed


def test_an_alias_named_like_an_available_model_is_refused() -> None:
    # Listed in /v1/models, gpt-4o would have been answered by gpt-4o-mini, the default included.
    message = settings_error(SLUICE_MODELS_ALIASES="gpt-4o=gpt-4o-mini")

    assert message.startswith("setting models")
    assert "alias 1 of 1 has the name of a model in models.available" in message


def test_malformed_aliases_name_the_expected_shape() -> None:
    message = settings_error(SLUICE_MODELS_ALIASES="fast")

    assert "models.aliases" in message
    assert "name=model pairs" in message


def test_environment_overrides_a_number() -> None:
    settings = load(SLUICE_SERVER_MAX_BODY_BYTES="2048", SLUICE_UPSTREAM_FIRST_TOKEN_TIMEOUT="1.5")

    assert settings.server.max_body_bytes == 2048
    assert settings.upstream.first_token_timeout == 1.5


def test_environment_overrides_a_list_with_comma_separated_values() -> None:
    settings = load(SLUICE_SERVER_CORS_ORIGINS="https://a.example, https://b.example")

    assert settings.server.cors_origins == ("https://a.example", "https://b.example")


def test_cors_origins_are_kept_as_browsers_send_them() -> None:
    settings = load(
        SLUICE_SERVER_CORS_ORIGINS=(
            "HTTPS://App.Example:443/, http://a.example:8080, tauri://localhost, https://Bücher.example, *"
        )
    )

    assert settings.server.cors_origins == (
        "https://app.example",
        "http://a.example:8080",
        "tauri://localhost",
        "https://xn--bcher-kva.example",
        "*",
    )


@pytest.mark.parametrize(
    "entry",
    ["app-example-sk-secret", "https://app.example/sk-secret", "https://app.example?sk-secret", "https://*.sk-secret"],
)
def test_a_cors_origin_that_is_not_an_origin_is_refused_naming_the_setting_not_the_value(entry: str) -> None:
    message = settings_error(SLUICE_SERVER_CORS_ORIGINS=f"https://ok.example, {entry}")

    assert "SLUICE_SERVER_CORS_ORIGINS" in message
    assert "entry 2 of 2 is not an origin" in message
    assert "sk-secret" not in message


def test_environment_overrides_the_model_list_and_default() -> None:
    settings = load(SLUICE_MODELS_AVAILABLE="gpt-4o,my-model", SLUICE_MODELS_DEFAULT="my-model")

    assert settings.models.available == ("gpt-4o", "my-model")
    assert settings.models.default == "my-model"


def test_environment_leaves_other_settings_at_their_defaults() -> None:
    assert load(SLUICE_SERVER_MAX_BODY_BYTES="2048").upstream == load().upstream


def test_an_overlay_file_overrides_the_defaults(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay.toml"
    overlay.write_text("[limits]\nmax_message_chars = 42\n")

    settings = load_settings(overlay, environ={})

    assert settings.limits.max_message_chars == 42
    assert settings.limits.max_history_messages == load().limits.max_history_messages


def test_environment_wins_over_the_overlay_file(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay.toml"
    overlay.write_text("[limits]\nmax_message_chars = 42\n")

    settings = load_settings(overlay, environ={"SLUICE_LIMITS_MAX_MESSAGE_CHARS": "43"})

    assert settings.limits.max_message_chars == 43


def test_integration_key_and_base_url_are_read() -> None:
    settings = load(AI_INTEGRATIONS_OPENAI_API_KEY=KEY, AI_INTEGRATIONS_OPENAI_BASE_URL="http://proxy.internal/v1")

    assert settings.upstream.api_key is not None
    assert settings.upstream.api_key.get_secret_value() == KEY
    assert settings.upstream.base_url == "http://proxy.internal/v1"


def test_openai_key_and_base_url_are_the_fallbacks() -> None:
    settings = load(OPENAI_API_KEY=KEY, OPENAI_BASE_URL="https://openai.example/v1")

    assert settings.upstream.api_key is not None
    assert settings.upstream.api_key.get_secret_value() == KEY
    assert settings.upstream.base_url == "https://openai.example/v1"


def test_integration_variables_take_precedence_over_openai_ones() -> None:
    settings = load(
        AI_INTEGRATIONS_OPENAI_API_KEY="sk-integration",
        OPENAI_API_KEY="sk-openai",
        AI_INTEGRATIONS_OPENAI_BASE_URL="https://integration.example/v1",
        OPENAI_BASE_URL="https://openai.example/v1",
    )

    assert settings.upstream.api_key is not None
    assert settings.upstream.api_key.get_secret_value() == "sk-integration"
    assert settings.upstream.base_url == "https://integration.example/v1"


def test_an_empty_integration_key_falls_back_to_openai_key() -> None:
    settings = load(AI_INTEGRATIONS_OPENAI_API_KEY="", OPENAI_API_KEY=KEY)

    assert settings.upstream.api_key is not None
    assert settings.upstream.api_key.get_secret_value() == KEY


def test_base_url_defaults_to_openai_without_any_variable() -> None:
    assert load().upstream.base_url == "https://api.openai.com/v1"


def test_simulated_without_a_key() -> None:
    assert load().simulated is True


def test_not_simulated_with_a_key() -> None:
    assert load(OPENAI_API_KEY=KEY).simulated is False


@pytest.mark.parametrize("key", [None, ""])
def test_a_base_url_without_a_key_stops_start_up_naming_where_it_was_set(key: str | None) -> None:
    """A deploy whose key went missing must not answer from the simulated model while ready."""
    environ = {"AI_INTEGRATIONS_OPENAI_BASE_URL": "https://llm.internal.example/v1"}
    if key is not None:
        environ["AI_INTEGRATIONS_OPENAI_API_KEY"] = key
    message = settings_error(**environ)
    assert "upstream.base_url (from environment variable AI_INTEGRATIONS_OPENAI_BASE_URL)" in message
    assert "no key is set" in message


def test_a_base_url_in_a_config_file_without_a_key_stops_start_up(tmp_path: Path) -> None:
    config = tmp_path / "mine.toml"
    config.write_text('[upstream]\nbase_url = "http://127.0.0.1:11434/v1"\n')
    with pytest.raises(SettingsError, match="no key is set"):
        load_settings(config, environ={})


@pytest.mark.parametrize(
    ("variable", "value", "setting", "expected"),
    [
        ("SLUICE_SERVER_MAX_BODY_BYTES", "lots", "server.max_body_bytes", "integer"),
        ("SLUICE_SERVER_MAX_BODY_BYTES", "0", "server.max_body_bytes", "greater than 0"),
        ("SLUICE_UPSTREAM_CONNECT_TIMEOUT", "soon", "upstream.connect_timeout", "number"),
        ("SLUICE_LOGGING_LEVEL", "loud", "logging.level", "'debug', 'info', 'warning' or 'error'"),
        ("SLUICE_LIMITS_MAX_HISTORY_MESSAGES", "-1", "limits.max_history_messages", "greater than or equal to 0"),
    ],
)
def test_a_wrong_value_names_the_setting_its_variable_and_what_was_expected(
    variable: str, value: str, setting: str, expected: str
) -> None:
    message = settings_error(**{variable: value})

    assert "\n" not in message
    assert setting in message
    assert variable in message
    assert expected in message


def test_a_base_url_without_http_scheme_is_refused() -> None:
    message = settings_error(OPENAI_BASE_URL="ftp://files.example")

    assert "\n" not in message
    assert "upstream.base_url" in message


def test_a_default_model_missing_from_the_list_is_refused() -> None:
    message = settings_error(SLUICE_MODELS_DEFAULT="sk-pasted-here-by-mistake")

    assert "\n" not in message
    assert "models.default is neither in models.available" in message
    assert "sk-pasted" not in message  # a value is never echoed: it might be a key


def test_an_unknown_setting_in_a_file_is_refused(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay.toml"
    overlay.write_text("[server]\nmax_body_byte = 10\n")

    with pytest.raises(SettingsError, match=r"server\.max_body_byte"):
        load_settings(overlay, environ={})


def test_a_missing_config_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "absent.toml", environ={})


def test_key_never_appears_in_repr_or_str() -> None:
    settings = load(AI_INTEGRATIONS_OPENAI_API_KEY=KEY)

    assert KEY not in repr(settings)
    assert KEY not in str(settings)
    assert KEY not in repr(settings.upstream)
    assert KEY not in str(settings.upstream.api_key)


def test_key_never_appears_in_a_settings_error() -> None:
    message = settings_error(AI_INTEGRATIONS_OPENAI_API_KEY=KEY, SLUICE_UPSTREAM_CONNECT_TIMEOUT=KEY)

    assert "upstream.connect_timeout" in message
    assert KEY not in message


def test_key_of_a_wrong_type_is_refused_without_echoing_it() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ={}, overrides={"upstream": {"api_key": [KEY]}})

    assert "upstream.api_key" in str(caught.value)
    assert KEY not in str(caught.value)


def test_settings_are_frozen() -> None:
    settings = load()

    with pytest.raises(ValidationError, match="frozen"):
        settings.models = settings.models
    with pytest.raises(ValidationError, match="frozen"):
        settings.server.max_body_bytes = 1


def test_list_settings_are_immutable_tuples() -> None:
    settings = load()

    assert isinstance(settings.models.available, tuple)
    assert isinstance(settings.server.cors_origins, tuple)


@pytest.mark.parametrize("level", ["INFO", "Info", "info"])
def test_choices_are_accepted_in_any_case(level: str) -> None:
    assert load(SLUICE_LOGGING_LEVEL=level, SLUICE_LOGGING_FORMAT="JSON").logging.level == "info"


def test_an_unknown_sluice_variable_is_refused_naming_the_closest_setting() -> None:
    message = settings_error(SLUICE_STREAM_HEARTBEAT="5")

    assert "SLUICE_STREAM_HEARTBEAT:" in message
    assert "did you mean SLUICE_STREAM_HEARTBEAT_INTERVAL?" in message


# What Kubernetes sets in every pod of a namespace holding a Service `sluice` (port `http`, 80) and
# a Service `sluice-redis` on an IPv6 cluster address.
SERVICE_LINKS = {
    "SLUICE_SERVICE_HOST": "10.96.0.12",
    "SLUICE_SERVICE_PORT": "80",
    "SLUICE_SERVICE_PORT_HTTP": "80",
    "SLUICE_PORT": "tcp://10.96.0.12:80",
    "SLUICE_PORT_80_TCP": "tcp://10.96.0.12:80",
    "SLUICE_PORT_80_TCP_PROTO": "tcp",
    "SLUICE_PORT_80_TCP_PORT": "80",
    "SLUICE_PORT_80_TCP_ADDR": "10.96.0.12",
    "SLUICE_REDIS_SERVICE_HOST": "fd00::a",
    "SLUICE_REDIS_SERVICE_PORT": "6379",
    "SLUICE_REDIS_PORT": "tcp://[fd00::a]:6379",
    "SLUICE_REDIS_PORT_6379_TCP": "tcp://[fd00::a]:6379",
    "SLUICE_REDIS_PORT_6379_TCP_PROTO": "tcp",
    "SLUICE_REDIS_PORT_6379_TCP_PORT": "6379",
    "SLUICE_REDIS_PORT_6379_TCP_ADDR": "fd00::a",
}


def test_the_variables_kubernetes_sets_for_services_named_sluice_are_no_mistake() -> None:
    assert load(**SERVICE_LINKS) == load()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SLUICE_SERVICE_HOST", "sluice.internal"),
        ("SLUICE_SERVICE_HOST", "0.0.0.0"),  # an address to listen on, meant as a setting
        ("SLUICE_SERVICE_HOST", "127.0.0.1"),
        ("SLUICE_REDIS_PORT", "6379"),
        ("SLUICE_REDIS_PORT", "tcp://[fd00::a:6379"),
        ("SLUICE_PORT_80_TCP_PROTO", "http"),
    ],
)
def test_a_service_link_name_with_a_value_kubernetes_never_sets_is_refused(name: str, value: str) -> None:
    assert f"environment variable {name}: no such setting" in settings_error(**{name: value})


def test_sluice_port_as_a_number_is_refused_naming_the_port_variable() -> None:
    assert "the port to listen on is PORT or --port" in settings_error(SLUICE_PORT="8080")


def test_port_comes_from_the_port_variable() -> None:
    assert load(PORT="9000").process.port == 9000
    assert load().process.port is None


def test_a_model_list_mistake_names_the_variable_that_caused_it() -> None:
    message = settings_error(SLUICE_MODELS_DEFAULT="gpt-9")

    assert "environment variable SLUICE_MODELS_DEFAULT" in message


def test_a_sluice_variable_that_a_setting_names_is_not_unknown(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay.toml"
    overlay.write_text('[upstream]\nconnect_timeout = 3.0\n[extra_names]\nsecret_env = "SLUICE_SOME_SECRET"\n')

    # The section itself is refused (it is not a setting), but not the variable it names.
    with pytest.raises(SettingsError) as caught:
        load_settings(overlay, environ={"SLUICE_SOME_SECRET": "x"})
    assert "extra_names" in str(caught.value)
    assert "SLUICE_SOME_SECRET" not in str(caught.value)


def test_the_largest_send_timeout_a_day_is_accepted() -> None:
    assert load(SLUICE_STREAM_SEND_TIMEOUT=str(MAX_SEND_TIMEOUT)).stream.send_timeout == MAX_SEND_TIMEOUT


@pytest.mark.parametrize(
    ("variable", "value", "setting"),
    [
        # Three times it in milliseconds is the kernel's TCP_USER_TIMEOUT, a C int: 715828 s overflowed.
        ("SLUICE_STREAM_SEND_TIMEOUT", "86401", "stream.send_timeout"),
        ("SLUICE_STREAM_SEND_TIMEOUT", "715828", "stream.send_timeout"),
        ("SLUICE_SERVER_BACKLOG", "2147483648", "server.backlog"),
        ("SLUICE_SERVER_BACKLOG", "99999999999999999999", "server.backlog"),
    ],
)
def test_a_value_past_what_the_kernel_takes_is_refused_naming_the_bound(
    variable: str, value: str, setting: str
) -> None:
    message = settings_error(**{variable: value})

    assert f"setting {setting}: Input should be less than or equal to" in message
    assert variable in message


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "Infinity"])
@pytest.mark.parametrize("variable", ["SLUICE_STREAM_SEND_TIMEOUT", "SLUICE_UPSTREAM_TOTAL_TIMEOUT"])
def test_an_infinite_or_nan_number_is_refused(variable: str, value: str) -> None:
    message = settings_error(**{variable: value})

    assert "\n" not in message
    assert "finite number" in message
    assert variable in message


def test_an_infinite_number_in_a_file_is_refused(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay.toml"
    overlay.write_text("[auth]\ntoken_ttl_seconds = inf\n")

    with pytest.raises(SettingsError, match=r"setting auth\.token_ttl_seconds: Input should be a finite number"):
        load_settings(overlay, environ={})


def test_the_upstream_key_written_in_a_file_is_refused_naming_its_variable(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay.toml"
    overlay.write_text(f'[upstream]\napi_key = "{KEY}"\n')

    with pytest.raises(SettingsError) as caught:
        load_settings(overlay, environ={})
    message = str(caught.value)
    assert message.startswith("setting upstream.api_key: keys are never written in a file")
    assert "AI_INTEGRATIONS_OPENAI_API_KEY" in message
    assert f"--config file {overlay}" in message
    assert KEY not in message


def test_the_generic_upstream_key_variable_is_refused_naming_the_documented_one() -> None:
    message = settings_error(SLUICE_UPSTREAM_API_KEY=KEY)

    assert message.startswith("environment variable SLUICE_UPSTREAM_API_KEY:")
    assert "AI_INTEGRATIONS_OPENAI_API_KEY" in message
    assert KEY not in message


def test_the_upstream_key_header_variable_is_still_a_setting() -> None:
    assert load(SLUICE_UPSTREAM_API_KEY_HEADER="api-key").upstream.api_key_header == "api-key"


def test_a_config_path_that_is_a_directory_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(tmp_path, environ={})

    assert str(caught.value) == f"--config file {tmp_path}: cannot be read: Is a directory"


def test_a_config_file_that_is_not_utf8_is_refused_naming_it_not_quoting_it(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay.toml"
    overlay.write_bytes(b"[server]\nbacklog = 5 # \xff\xfe sk-\xe9\n")

    with pytest.raises(SettingsError) as caught:
        load_settings(overlay, environ={})
    message = str(caught.value)
    assert message.startswith(f"--config file {overlay}: not UTF-8 text")
    assert "0xff" not in message


@pytest.mark.parametrize(
    ("variable", "setting"),
    [
        ("SLUICE_ROUTING_FALLBACKS", "routing.fallbacks"),
        ("SLUICE_ROUTING_CONTEXT_WINDOW_FALLBACKS", "routing.context_window_fallbacks"),
        ("SLUICE_AUTH_KEYS", "auth.keys"),
    ],
)
def test_a_table_setting_from_the_environment_says_it_is_set_in_the_config_file(variable: str, setting: str) -> None:
    message = settings_error(**{variable: "a=b"})

    assert message == (
        f"setting {setting}: takes TOML tables, set in the --config file, not in the environment "
        f"(from environment variable {variable})"
    )
