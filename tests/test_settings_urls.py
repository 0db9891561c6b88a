"""redis.url and the upstreams' base URLs are read at start-up as their clients will read them.

A mistake redis-py or aiohttp would only meet later (a TypeError on every command, a traceback, a
502 on every chat, a silent default) stops start-up naming the setting and where its value came
from, never quoting the URL.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from server.cli import listening_url
from server.settings import SettingsError, load_settings
from server.settings.redis_url import url_options
from server.shared.link import RedisLink
from tests.conftest import make_settings

SECRET = "hunter2"


def redis_refusal(url: str) -> str:
    """The one-line refusal of `url` given as SLUICE_REDIS_URL, checked to name the setting and variable."""
    with pytest.raises(SettingsError) as caught:
        make_settings({"SLUICE_REDIS_URL": url})
    message = str(caught.value)
    assert message.startswith("setting redis.url: "), message
    assert message.endswith("(from environment variable SLUICE_REDIS_URL)"), message
    assert SECRET not in message
    return message


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param(
            f"redis://:{SECRET}@127.0.0.1:6379/0?socket_timout=5",
            "query option 1 of 1 is not one Sluice's Redis connections take; did you mean socket_timeout?",
            id="misspelled-option",
        ),
        pytest.param(f"redis://:{SECRET}@127.0.0.1:99999/0", "its port is not a number 1-65535", id="port-99999"),
        pytest.param(f"redis://:{SECRET}@127.0.0.1:0/0", "its port is not a number 1-65535", id="port-0"),
        pytest.param(f"redis://:{SECRET}@127.0.0.1/abc", "its path is not a database number", id="db-not-a-number"),
        pytest.param(f"redis://:{SECRET}@127.0.0.1/0?db=x", "query option db: its value", id="db-option-not-a-number"),
        pytest.param(f"redis://:{SECRET}@/0", "the URL names no host", id="no-host"),
        pytest.param("unix://redis.sock", "a socket's path, no host", id="unix-with-a-host"),
        pytest.param("redis://h/0?ssl_ca_certs=/ca.pem", "for TLS connections, rediss:// only", id="tls-option-no-tls"),
        pytest.param("unix:///r.sock?socket_keepalive=1", "for TCP connections, not unix://", id="tcp-option-unix"),
        pytest.param("redis://h/0?protocol=4", "query option protocol: expected 2 or 3", id="protocol-4"),
        pytest.param(
            "redis://h/0?max_connections=5", "set by Sluice itself; set redis.command_connections", id="pool-size"
        ),
        pytest.param("redis://h/0?socket_timeout=5", "query option socket_timeout is set by Sluice", id="timeout"),
    ],
)
def test_a_redis_url_redis_py_would_misread_is_refused_saying_what_is_wrong(url: str, expected: str) -> None:
    assert expected in redis_refusal(url)


@pytest.mark.parametrize(
    "url",
    [
        "redis://redis:6379/0",
        "redis://127.0.0.1",
        f"redis://user:{SECRET}@[::1]:6379/3?health_check_interval=10&socket_keepalive=yes",
        f"rediss://:{SECRET}@redis.example:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/ssl/ca.pem",
        "unix:///run/redis/redis.sock?db=2",
    ],
)
def test_a_well_formed_redis_url_is_accepted(url: str) -> None:
    settings = make_settings({"SLUICE_REDIS_URL": url})
    assert settings.redis.url is not None
    assert settings.redis.url.get_secret_value() == url


# A value redis-py takes for each option a redis.url may set.
SAMPLE_VALUES = {
    "db": "1",
    "username": "sluice",
    "password": SECRET,
    "health_check_interval": "5",
    "socket_read_size": "65536",
    "protocol": "2",
    "socket_keepalive": "true",
    "ssl_cert_reqs": "required",
    "ssl_ca_certs": "/etc/ssl/ca.pem",
    "ssl_ca_path": "/etc/ssl/certs",
    "ssl_certfile": "/etc/ssl/client.pem",
    "ssl_keyfile": "/etc/ssl/client.key",
    "ssl_password": SECRET,
    "ssl_check_hostname": "true",
    "ssl_ciphers": "HIGH",
    "ssl_min_version": "771",
    "ssl_include_verify_flags": "VERIFY_X509_STRICT",
    "ssl_exclude_verify_flags": "VERIFY_X509_PARTIAL_CHAIN",
}


@pytest.mark.parametrize(
    "base", ["redis://127.0.0.1:6379/0", "rediss://redis.example:6380/0", "unix:///run/redis/redis.sock"]
)
async def test_every_option_a_redis_url_may_set_is_one_the_links_connections_take(base: str) -> None:
    """redis-py hands each option to the connection class by name: one it does not take is a TypeError per command."""
    options = url_options(base.partition(":")[0])
    url = base + "?" + "&".join(f"{name}={SAMPLE_VALUES[name]}" for name in sorted(options))
    link = RedisLink(make_settings({"SLUICE_REDIS_URL": url}).redis)
    dedicated = link.dedicated(None)
    try:
        # Made as for a command: no connection is opened before it is used. redis-py leaves it untyped.
        link.client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        dedicated.connection_pool.make_connection()  # type: ignore[no-untyped-call]
    finally:
        await dedicated.aclose()
        await link.close()


def base_url_refusal(url: str) -> str:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ={"AI_INTEGRATIONS_OPENAI_BASE_URL": url, "AI_INTEGRATIONS_OPENAI_API_KEY": "sk-test"})
    message = str(caught.value)
    assert message.startswith("setting upstream.base_url: "), message
    assert message.endswith("(from environment variable AI_INTEGRATIONS_OPENAI_BASE_URL)"), message
    return message


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param("http://127.0.0.1:99999/v1", "its port is not a number 1-65535", id="port-99999"),
        pytest.param("http://127.0.0.1:0/v1", "its port is not a number 1-65535", id="port-0"),
        pytest.param("http://", "the URL names no host", id="scheme-only"),
        pytest.param("http:///v1", "the URL names no host", id="no-host"),
        pytest.param("http://[::1/v1", "its host is malformed", id="unclosed-ipv6"),
    ],
)
def test_an_upstream_base_url_aiohttp_cannot_send_to_is_refused(url: str, expected: str) -> None:
    assert expected in base_url_refusal(url)


def test_an_upstreams_entry_base_url_with_a_port_out_of_range_is_refused_naming_the_entry(tmp_path: Path) -> None:
    config = tmp_path / "mine.toml"
    config.write_text('[[upstreams]]\nname = "local"\nbase_url = "http://127.0.0.1:99999/v1"\n')

    with pytest.raises(SettingsError) as caught:
        load_settings(config, environ={})

    assert str(caught.value) == (
        f"setting upstreams.0.base_url: its port is not a number 1-65535 (from --config file {config})"
    )


@pytest.mark.parametrize(
    "url", ["https://api.openai.com/v1", "http://[::1]:8080/v1?api-version=2024-06-01", "http://localhost:65535"]
)
def test_a_well_formed_base_url_is_accepted(url: str) -> None:
    environ = {"AI_INTEGRATIONS_OPENAI_BASE_URL": url, "AI_INTEGRATIONS_OPENAI_API_KEY": "sk-test"}
    assert load_settings(environ=environ).upstream.base_url == url


@pytest.mark.parametrize(
    ("host", "url"),
    [("127.0.0.1", "http://127.0.0.1:8000"), ("::1", "http://[::1]:8000"), ("localhost", "http://localhost:8000")],
)
def test_the_listening_line_writes_the_url_as_a_client_would(host: str, url: str) -> None:
    assert listening_url(host, 8000) == url
