"""The `[redis]` settings: unset keeps memory mode; a URL is a secret and must name Redis."""

from __future__ import annotations

import pytest

from server.settings import SettingsError
from tests.conftest import make_settings


def test_without_a_url_redis_mode_is_off() -> None:
    assert make_settings().redis.url is None


def test_the_environment_turns_redis_mode_on_and_the_url_never_shows() -> None:
    settings = make_settings({"SLUICE_REDIS_URL": "redis://:hunter2@redis:6379/0"})
    assert settings.redis.url is not None
    assert settings.redis.url.get_secret_value() == "redis://:hunter2@redis:6379/0"
    assert "hunter2" not in repr(settings)


def test_a_url_that_is_not_redis_is_refused_naming_the_setting() -> None:
    with pytest.raises(SettingsError, match=r"redis\.url: .*\(from environment variable SLUICE_REDIS_URL\)") as raised:
        make_settings({"SLUICE_REDIS_URL": "http://hunter2@example"})
    assert "hunter2" not in str(raised.value)
