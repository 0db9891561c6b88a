"""`--workers N` without Redis says at start-up that each worker counts the keys' limits alone.

Each worker then admits a key's rpm, tpm and max_streams by itself, N times in all; nothing said so
(found by a security review: a key with max_streams 2 ran 4 streams on two workers).
"""

from __future__ import annotations

from typing import Any

from structlog.testing import capture_logs

from server.settings import Settings
from server.workers import _warn_if_limits_per_worker
from tests.conftest import make_settings

HASH = "0" * 64


def keyed(*keys: dict[str, Any], redis_url: str | None = None) -> Settings:
    sections: dict[str, Any] = {"auth": {"keys": [{"key_sha256": HASH, **key} for key in keys]}}
    if redis_url is not None:
        sections["redis"] = {"url": redis_url}
    return make_settings(**sections)


def warnings_for(settings: Settings) -> list[Any]:
    with capture_logs() as events:
        _warn_if_limits_per_worker(2, settings)
    return [event for event in events if event["event"] == "limits_per_worker"]


def test_workers_without_redis_say_which_keys_limits_each_counts_alone() -> None:
    settings = keyed({"name": "team-a", "max_streams": 2}, {"name": "open"}, {"name": "team-b", "rpm": 60})

    [warning] = warnings_for(settings)

    assert warning["log_level"] == "warning"
    assert warning["keys"] == ["team-a", "team-b"]
    assert "2 times" in warning["message"]


def test_workers_sharing_redis_say_nothing() -> None:
    assert warnings_for(keyed({"name": "team-a", "max_streams": 2}, redis_url="redis://127.0.0.1:6379/0")) == []


def test_keys_without_limits_say_nothing() -> None:
    assert warnings_for(keyed({"name": "open"})) == []
