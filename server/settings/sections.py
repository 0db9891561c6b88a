"""The sections about this process: serving, logging, limits, streams, browser streams, connections, Redis."""

from __future__ import annotations

import os
import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, IPvAnyNetwork, SecretStr, field_validator, model_validator

from .base import Section
from .redis_url import check_redis_url

# listen()'s backlog is a C int; the kernel caps it at net.core.somaxconn anyway.
MAX_BACKLOG = 2**31 - 1
# A day: far past any client worth waiting for, and 3x it in milliseconds (the kernel's
# TCP_USER_TIMEOUT backstop, see sse.py) still fits the C int the kernel takes.
MAX_SEND_TIMEOUT = 86400.0


class ServerSettings(Section):
    backlog: int = Field(gt=0, le=MAX_BACKLOG, description="Connections the kernel queues; at most 2147483647.")
    max_body_bytes: int = Field(gt=0)
    max_body_bytes_held: int = Field(gt=0)
    cors_origins: tuple[str, ...]
    retry_after: int = Field(ge=0)
    drain_timeout: float = Field(ge=0)
    max_live_streams: int = Field(ge=0)
    # Proxies (addresses or networks) whose X-Forwarded-For names the client in the access log.
    trusted_proxies: tuple[IPvAnyNetwork, ...] = ()

    @field_validator("cors_origins")
    @classmethod
    def _origins_as_browsers_send_them(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        normalised = []
        for number, origin in enumerate(origins, start=1):
            try:
                normalised.append(normalise_origin(origin))
            except ValueError as exc:
                # Named by its place, never echoed: it might be a key pasted into the wrong variable.
                raise ValueError(f"entry {number} of {len(origins)} {exc}") from None
        return tuple(normalised)


_DEFAULT_PORTS = {"http": 80, "https": 443}
# RFC 3986's scheme: an app's own (chrome-extension://, tauri://, capacitor://) is an origin too.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")


def normalise_origin(origin: str) -> str:
    """`origin` as a browser's `Origin` header spells it (`*` and `null` as they are).

    A browser sends the scheme and host in lower case (an international name in its ASCII form),
    no default port, no path: an allowlist entry written `https://App.example.com:443/` is that
    origin, and one with a path, a query or a wildcard is a mistake (refused at start-up, naming
    the setting). The error names what is wrong, never the value.
    """
    if origin in ("*", "null"):
        return origin
    parts = urlsplit(origin.strip())
    try:
        port = parts.port
    except ValueError:
        port = -1
    if not _SCHEME.fullmatch(parts.scheme) or not parts.hostname or port == -1:
        raise ValueError("is not an origin: expected scheme://host[:port], or '*'")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("is not an origin: no path, query or user, only scheme://host[:port]")
    if "*" in parts.hostname:
        raise ValueError("is not an origin: no wildcards; list each origin, or '*' for any")
    scheme, host = parts.scheme.lower(), parts.hostname
    if ":" in host:
        host = f"[{host}]"
    elif not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")  # what a browser sends for an international name
        except UnicodeError:
            raise ValueError("is not an origin: its host is not a valid domain name") from None
    return f"{scheme}://{host}" if port in (None, _DEFAULT_PORTS.get(scheme)) else f"{scheme}://{host}:{port}"


class LoggingSettings(Section):
    format: Literal["auto", "json", "console"]
    level: Literal["debug", "info", "warning", "error"]


class LimitSettings(Section):
    max_message_chars: int = Field(gt=0)
    max_history_messages: int = Field(ge=0)


class StreamSettings(Section):
    heartbeat_interval: float = Field(gt=0)
    send_timeout: float = Field(
        gt=0,
        le=MAX_SEND_TIMEOUT,
        description="Seconds a client may accept nothing before it is cut; at most a day (86400).",
    )
    retry_ms: int = Field(ge=0)


class BrowserSettings(Section):
    retention_seconds: float = Field(ge=0)
    # 0 cancelled every stream before its reader could attach: the grace starts with the stream.
    reader_grace_seconds: float = Field(gt=0)
    max_buffered_events: int = Field(ge=1)
    max_streams: int = Field(ge=1)
    max_buffered_bytes: int = Field(ge=1)
    max_kept_bytes: int = Field(ge=1)


class DashboardSettings(Section):
    """The live dashboard: how many may watch its feed at once."""

    max_feeds: int = Field(ge=1)


class ConnectionSettings(Section):
    """Bounds on what one client connection may cost: read deadlines and how many may be open."""

    header_timeout: float = Field(gt=0)
    body_timeout: float = Field(gt=0)
    max_connections: int = Field(ge=0)
    saturation_ratio: float = Field(gt=0, le=1)
    max_upstream_event_bytes: int = Field(gt=0)
    max_upstream_reply_bytes: int = Field(gt=0)


class RedisSettings(Section):
    """Shared state for several instances; an empty `url` keeps everything in this process's memory."""

    url: SecretStr | None = None
    key_prefix: str = Field(min_length=1)
    lease_seconds: float = Field(gt=0)
    slot_lease_seconds: float = Field(gt=0)
    command_connections: int = Field(ge=1)
    reader_connections: int = Field(ge=1)
    outage_seconds: float = Field(ge=0)
    fail_open: bool

    @model_validator(mode="before")
    @classmethod
    def _empty_url_is_none(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("url") == "":
            return {**data, "url": None}
        return data

    @field_validator("url")
    @classmethod
    def _url_is_redis(cls, url: SecretStr | None) -> SecretStr | None:
        if url is not None:
            check_redis_url(url.get_secret_value())
        return url


class SimulatorSettings(Section):
    ttft_ms: float = Field(ge=0)
    gap_ms: float = Field(ge=0)
    tokens: int = Field(gt=0)


class ProcessSettings(Section):
    """What the process environment, rather than a config file, says about this process."""

    # PORT, set by hosting platforms; --port wins over it.
    port: int | None = None
    # Where prometheus-client keeps per-worker values; the --workers supervisor sets it.
    metrics_dir: str | None = None

    @field_validator("port", mode="before")
    @classmethod
    def _port_number(cls, value: Any) -> Any:
        if value is None or (isinstance(value, int) and 1 <= value <= 65535):
            return value
        if isinstance(value, str) and value.isdigit() and 1 <= int(value) <= 65535:
            return int(value)
        raise ValueError("expected a port number 1-65535")

    @field_validator("metrics_dir")
    @classmethod
    def _existing_directory(cls, value: str | None) -> str | None:
        # prometheus-client writes a file there for the first metric: a missing one was a traceback
        # at start-up (or every worker dying, with --workers), not a refusal naming the variable.
        if value is not None and not os.path.isdir(value):
            raise ValueError("expected an existing directory (prometheus-client's multi-process files go there)")
        return value
