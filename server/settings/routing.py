"""The sections about upstreams: the default upstream, `[[upstreams]]`, routing, and the model list."""

from __future__ import annotations

from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from yarl import URL

from .base import Section
from .ports import check_port

# How an upstream is given its key: `Authorization: Bearer KEY` (OpenAI and most others), or
# `api-key: KEY` (Azure OpenAI's classic deployments, which do not read a bearer key).
ApiKeyHeader = Literal["authorization", "api-key"]


def _without_credentials(base_url: str, key_setting: str) -> str:
    """Refuse a base URL that holds a user name or password (`http://user:pass@host/v1`).

    Sluice sends its key in a header of its own and never the URL's user part: such a URL would reach
    the upstream without its credentials, silently. The message never quotes the URL.
    """
    if "@" in urlsplit(base_url).netloc:
        raise ValueError(f"must not hold a user name or password; give the key with {key_setting} instead")
    return base_url


def _host_and_port(base_url: str) -> str:
    """Refuse a base URL aiohttp cannot send to: no host (`http:///v1`), a port past 1-65535.

    Accepted, the first was a 502 on every chat while /readyz said ready; the second a traceback at
    start-up (each worker's, with --workers). The host is read by yarl, as aiohttp reads it. The
    message never quotes the URL.
    """
    try:
        parts = urlsplit(base_url)
    except ValueError:  # an unclosed [IPv6 address
        raise ValueError("expected http(s)://host[:port]/path: its host is malformed") from None
    check_port(parts)
    try:
        host = URL(base_url).host
    except ValueError:
        host = None
    if not host:
        raise ValueError("expected http(s)://host[:port]/path: the URL names no host")
    return base_url


class _UpstreamAddress(Section):
    """Where an upstream is and how it is spoken to: what `[upstream]` and `[[upstreams]]` share."""

    # The setting a URL's user part should be given as instead (named in the refusal).
    _key_setting: ClassVar[str]

    base_url: str = Field(pattern=r"^https?://")
    api_key: SecretStr | None = None
    # Send only fields every OpenAI-compatible server knows (see server/upstreams/portable.py).
    portable_body: bool = False
    api_key_header: ApiKeyHeader = "authorization"

    @field_validator("base_url")
    @classmethod
    def _base_url_names_where(cls, value: str) -> str:
        return _host_and_port(value)

    @field_validator("base_url")
    @classmethod
    def _base_url_has_no_credentials(cls, value: str) -> str:
        return _without_credentials(value, cls._key_setting)


class UpstreamSettings(_UpstreamAddress):
    _key_setting = "AI_INTEGRATIONS_OPENAI_API_KEY"

    connect_timeout: float = Field(gt=0)
    first_token_timeout: float = Field(gt=0)
    header_timeout: float = Field(gt=0)
    idle_timeout: float = Field(gt=0)
    total_timeout: float = Field(gt=0)
    max_connections: int = Field(ge=0)
    probe_interval: float = Field(gt=0)


class UpstreamEntry(_UpstreamAddress):
    """One `[[upstreams]]` table: an OpenAI-compatible API and the models it serves."""

    _key_setting = "api_key_env"

    name: str = Field(min_length=1)
    api_key_env: str | None = None
    # `api_key` is filled by load_settings from the variable `api_key_env` names; never written in a file.
    models: tuple[str, ...] = ("*",)
    weight: float = Field(default=1.0, gt=0)
    max_concurrency: int = Field(default=0, ge=0)
    continuation: Literal["none", "assistant-prefill"] = "none"
    continuation_body: dict[str, Any] = Field(default_factory=dict)

    def serves(self, model: str) -> bool:
        """True when this upstream is configured for `model`."""
        return "*" in self.models or model in self.models

    def key_header(self) -> tuple[str, str] | None:
        """The header that gives this upstream its key, as (name, value), by `api_key_header`; None without a key."""
        if self.api_key is None:
            return None
        key = self.api_key.get_secret_value()
        return ("api-key", key) if self.api_key_header == "api-key" else ("Authorization", f"Bearer {key}")


class RoutingSettings(Section):
    retries: int = Field(ge=0)
    retry_budget_seconds: float = Field(ge=0)
    fallbacks: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    context_window_fallbacks: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    hedge_after_seconds: float = Field(ge=0)
    breaker_failures: int = Field(gt=0)
    breaker_cooldown_seconds: float = Field(ge=0)
    breaker_on_rate_limit: bool


# In models.available: forward any model name the client sends.
ANY_MODEL = "*"


class ModelSettings(Section):
    default: str
    available: tuple[str, ...] = Field(min_length=1)
    # Names a client may use for another model: {"fast": "gpt-4o-mini"}.
    aliases: dict[str, str] = Field(default_factory=dict)
    # Read the upstream's GET /models at start and every `discover_interval` seconds.
    discover: bool = False
    discover_interval: float = Field(default=300.0, gt=0)

    @field_validator("aliases", mode="before")
    @classmethod
    def _aliases_from_text(cls, value: Any) -> Any:
        # SLUICE_MODELS_ALIASES="fast=gpt-4o-mini,smart=gpt-4o"
        if isinstance(value, str):
            pairs = [part.strip() for part in value.split(",") if part.strip()]
            if not all(pair.count("=") == 1 for pair in pairs):
                raise ValueError("expected name=model pairs separated by commas")
            return {name.strip(): model.strip() for name, model in (pair.split("=") for pair in pairs)}
        return value

    @model_validator(mode="after")
    def _default_is_available(self) -> ModelSettings:
        # Aliases are named by their place, never quoted: a value may be a key pasted into the wrong
        # variable (the rule every settings error keeps).
        count = len(self.aliases)
        for number, name in enumerate(self.aliases, 1):
            if name in self.available:
                # An alias wins over the model of the same name: listed in /v1/models, that model
                # would be answered by another one, the default included, with nothing to tell.
                raise ValueError(
                    f"alias {number} of {count} has the name of a model in models.available, which it "
                    "would answer for; remove it from one of the two"
                )
        if ANY_MODEL in self.available or self.discover:
            return self
        known = set(self.available)
        if self.default not in known and self.aliases.get(self.default) not in known:
            raise ValueError("models.default is neither in models.available nor an alias of a model in it")
        for number, target in enumerate(self.aliases.values(), 1):
            if target not in known:
                raise ValueError(f"alias {number} of {count} names a model that is not in models.available")
        return self
