"""Load Sluice's settings once: config/default.toml, an optional overlay file, then the environment.

The result is a frozen, validated `Settings`. Only this module reads files and the environment;
everything else receives the object. A wrong value raises `SettingsError` with one line naming
the setting and what was expected.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

# server/config links to the repository's config/, and is packaged: one path from a clone or a wheel.
DEFAULT_CONFIG = Path(__file__).resolve().parent / "config" / "default.toml"
ENV_PREFIX = "SLUICE_"
KEY_VARIABLES = ("AI_INTEGRATIONS_OPENAI_API_KEY", "OPENAI_API_KEY")
BASE_URL_VARIABLES = ("AI_INTEGRATIONS_OPENAI_BASE_URL", "OPENAI_BASE_URL")
PORT_VARIABLE = "PORT"
METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


class SettingsError(ValueError):
    """A setting is missing, malformed or out of range."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _lower_case_choices(cls, data: Any) -> Any:
        """Accept `INFO` for `info`: choices are lower case, and environment values often are not."""
        if not isinstance(data, dict):
            return data
        lowered = dict(data)
        for name, field in cls.model_fields.items():
            if get_origin(field.annotation) is Literal and isinstance(lowered.get(name), str):
                lowered[name] = lowered[name].lower()
        return lowered


class ServerSettings(_Section):
    backlog: int = Field(gt=0)
    max_body_bytes: int = Field(gt=0)
    cors_origins: tuple[str, ...]
    retry_after: int = Field(ge=0)
    drain_timeout: float = Field(ge=0)
    max_live_streams: int = Field(ge=0)
    # Proxies (addresses or networks) whose X-Forwarded-For names the client in the access log.
    trusted_proxies: tuple[IPvAnyNetwork, ...] = ()


class LoggingSettings(_Section):
    format: Literal["auto", "json", "console"]
    level: Literal["debug", "info", "warning", "error"]


class LimitSettings(_Section):
    max_message_chars: int = Field(gt=0)
    max_history_messages: int = Field(ge=0)


class UpstreamSettings(_Section):
    base_url: str = Field(pattern=r"^https?://")
    api_key: SecretStr | None = None
    connect_timeout: float = Field(gt=0)
    first_token_timeout: float = Field(gt=0)
    header_timeout: float = Field(gt=0)
    idle_timeout: float = Field(gt=0)
    total_timeout: float = Field(gt=0)
    max_connections: int = Field(ge=0)
    probe_interval: float = Field(gt=0)


class UpstreamEntry(_Section):
    """One `[[upstreams]]` table: an OpenAI-compatible API and the models it serves."""

    name: str = Field(min_length=1)
    base_url: str = Field(pattern=r"^https?://")
    api_key_env: str | None = None
    # Filled by load_settings from the variable `api_key_env` names; never written in a file.
    api_key: SecretStr | None = None
    models: tuple[str, ...] = ("*",)
    weight: float = Field(default=1.0, gt=0)
    max_concurrency: int = Field(default=0, ge=0)
    continuation: Literal["none", "assistant-prefill"] = "none"
    continuation_body: dict[str, Any] = Field(default_factory=dict)

    def serves(self, model: str) -> bool:
        """True when this upstream is configured for `model`."""
        return "*" in self.models or model in self.models


class RoutingSettings(_Section):
    retries: int = Field(ge=0)
    retry_budget_seconds: float = Field(ge=0)
    fallbacks: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    context_window_fallbacks: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    hedge_after_seconds: float = Field(ge=0)
    breaker_failures: int = Field(gt=0)
    breaker_cooldown_seconds: float = Field(ge=0)
    breaker_on_rate_limit: bool


class StreamSettings(_Section):
    heartbeat_interval: float = Field(gt=0)
    send_timeout: float = Field(gt=0)
    retry_ms: int = Field(ge=0)


# In models.available: forward any model name the client sends.
ANY_MODEL = "*"


class ModelSettings(_Section):
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
        if ANY_MODEL in self.available or self.discover:
            return self
        known = set(self.available)
        if self.default not in known and self.aliases.get(self.default) not in known:
            raise ValueError(f"default model {self.default!r} is not in models.available")
        for name, target in self.aliases.items():
            if target not in known:
                raise ValueError(f"alias {name!r} names {target!r}, which is not in models.available")
        return self


class BrowserSettings(_Section):
    retention_seconds: float = Field(ge=0)
    reader_grace_seconds: float = Field(ge=0)
    max_buffered_events: int = Field(ge=1)
    max_streams: int = Field(ge=1)
    max_buffered_bytes: int = Field(ge=1)


class ConnectionSettings(_Section):
    """Bounds on what one client connection may cost: read deadlines and how many may be open."""

    header_timeout: float = Field(gt=0)
    body_timeout: float = Field(gt=0)
    max_connections: int = Field(ge=0)
    saturation_ratio: float = Field(gt=0, le=1)
    max_upstream_event_bytes: int = Field(gt=0)
    max_upstream_reply_bytes: int = Field(gt=0)


_SHA256_HEX = r"^[0-9a-f]{64}$"


class GatewayKeySettings(_Section):
    """One gateway key: its name, its hash (or the variable holding the key), its models and limits."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    key_sha256: str | None = Field(default=None, pattern=_SHA256_HEX)
    key_env: str | None = Field(default=None, min_length=1)
    models: tuple[str, ...] | None = None
    rpm: int = Field(default=0, ge=0)
    tpm: int = Field(default=0, ge=0)
    max_streams: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _one_source(self) -> GatewayKeySettings:
        if (self.key_sha256 is None) == (self.key_env is None):
            raise ValueError(f"key {self.name!r}: set exactly one of key_sha256 and key_env")
        return self


class AuthSettings(_Section):
    """Gateway keys; with none, every route is open (the embedded default)."""

    secret_env: str = Field(min_length=1)
    secret: SecretStr | None = None
    token_ttl_seconds: float = Field(gt=0)
    metrics_key_sha256: str = Field(pattern=r"^([0-9a-f]{64})?$")
    keys: tuple[GatewayKeySettings, ...] = ()

    @model_validator(mode="after")
    def _unique_names(self) -> AuthSettings:
        names = [key.name for key in self.keys]
        if len(names) != len(set(names)):
            raise ValueError("auth.keys: every key needs its own name")
        return self

    @property
    def enabled(self) -> bool:
        """True when gateway keys are configured and every chat route requires one."""
        return bool(self.keys)


class RedisSettings(_Section):
    """Shared state for several instances; an empty `url` keeps everything in this process's memory."""

    url: SecretStr | None = None
    key_prefix: str = Field(min_length=1)
    lease_seconds: float = Field(gt=0)
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
        if url is not None and not url.get_secret_value().startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("expected a URL starting with redis://, rediss:// or unix://")
        return url


class SimulatorSettings(_Section):
    ttft_ms: float = Field(ge=0)
    gap_ms: float = Field(ge=0)
    tokens: int = Field(gt=0)


class ProcessSettings(_Section):
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


class Settings(_Section):
    """Everything Sluice is configured with; frozen once loaded."""

    server: ServerSettings
    logging: LoggingSettings
    limits: LimitSettings
    upstream: UpstreamSettings
    stream: StreamSettings
    models: ModelSettings
    browser: BrowserSettings
    simulator: SimulatorSettings
    redis: RedisSettings
    connections: ConnectionSettings
    auth: AuthSettings
    routing: RoutingSettings
    upstreams: tuple[UpstreamEntry, ...] = ()

    @model_validator(mode="after")
    def _upstream_names_are_unique(self) -> Settings:
        names = [entry.name for entry in self.upstreams]
        if len(names) != len(set(names)):
            raise ValueError("every [[upstreams]] entry needs its own name")
        return self

    process: ProcessSettings = ProcessSettings()

    @property
    def simulated(self) -> bool:
        """True when no upstream key or [[upstreams]] is configured and the simulated model answers."""
        return self.upstream.api_key is None and not self.upstreams

    def upstream_entries(self, simulator_url: str | None = None) -> tuple[UpstreamEntry, ...]:
        """The configured upstreams; without [[upstreams]], one named `default` from [upstream]."""
        if self.upstreams:
            return self.upstreams
        base_url = simulator_url or self.upstream.base_url
        return (UpstreamEntry(name="default", base_url=base_url, api_key=self.upstream.api_key),)


def load_settings(
    config_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Read default.toml, overlay `config_path`, the environment and `overrides`, then validate."""
    env = os.environ if environ is None else environ
    sources = _Sources()
    raw = _read_toml(DEFAULT_CONFIG)
    sources.note(raw, f"file {DEFAULT_CONFIG.name}")
    if config_path is not None:
        overlay = _read_toml(config_path)
        sources.note(overlay, f"--config file {config_path}")
        _merge(raw, overlay)
    for layer in (_from_environment(raw, env), _upstream_from_environment(env), _process_from_environment(env)):
        for (section, key), (value, variable) in layer.items():
            raw.setdefault(section, {})[key] = value
            sources.by_setting[(section, key)] = f"environment variable {variable}"
    _resolve_upstream_keys(raw, env)
    for section, values in (overrides or {}).items():
        _merge(raw, {section: dict(values)})
    _auth_from_environment(raw, env)
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, sources)) from None


def child_environment(metrics_dir: str) -> dict[str, str]:
    """This process's environment for a worker it starts, with the shared metrics directory."""
    return {**os.environ, METRICS_DIR_VARIABLE: metrics_dir}


class _Sources:
    """Where each setting's value came from, to name it when the value is wrong."""

    def __init__(self) -> None:
        self.by_setting: dict[tuple[str, ...], str] = {}

    def note(self, table: Mapping[str, Any], source: str) -> None:
        for section, values in table.items():
            self.by_setting[(section,)] = source
            if isinstance(values, Mapping):
                for key in values:
                    self.by_setting[(section, key)] = source

    def of(self, loc: tuple[str, ...]) -> str | None:
        if len(loc) >= 2:
            return self.by_setting.get(loc[:2]) or self.by_setting.get(loc[:1])
        # A whole section was refused (e.g. a default model not in the list): name what overrode it.
        section_default = self.by_setting.get(loc)
        overriding = sorted(
            {s for key, s in self.by_setting.items() if key[:1] == loc and len(key) == 2 and s != section_default}
        )
        return ", ".join(overriding) or section_default


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise SettingsError(f"--config file {path}: not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"--config file {path}: not valid TOML: {exc}") from None


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


_Found = dict[tuple[str, str], tuple[Any, str]]


def _from_environment(raw: Mapping[str, Any], env: Mapping[str, str]) -> _Found:
    """Take SLUICE_<SECTION>_<KEY> for every setting; lists are comma-separated.

    Any other SLUICE_ name is a mistake (a typo would otherwise be silently ignored).
    """
    known: dict[str, tuple[str, str, Any]] = {}
    for section, field in Settings.model_fields.items():
        # [process] comes from PORT and PROMETHEUS_MULTIPROC_DIR under their usual names only.
        fields = getattr(field.annotation, "model_fields", {}) if section != "process" else {}
        for key, setting in fields.items():
            listed = get_origin(setting.annotation) is tuple
            known[f"{ENV_PREFIX}{section}_{key}".upper()] = (section, key, [] if listed else None)
    for section, values in raw.items():
        if isinstance(values, dict):
            for key, default in values.items():
                known[f"{ENV_PREFIX}{section}_{key}".upper()] = (section, key, default)
    named = set(_named_variables(raw))
    found: _Found = {}
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in named:
            continue
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else "; see config/default.toml for the settings"
            raise SettingsError(f"environment variable {name}: no such setting{hint}")
        section, key, default = known[name]
        text = env[name]
        value: Any = [p.strip() for p in text.split(",") if p.strip()] if isinstance(default, list) else text
        found[(section, key)] = (value, name)
    return found


def _named_variables(value: Any, key: str = "") -> Iterator[str]:
    """Every variable a setting names (`*_env = "NAME"`): read by its own setting, so not unknown."""
    if isinstance(value, Mapping):
        for name, item in value.items():
            yield from _named_variables(item, str(name))
    elif isinstance(value, list):
        for item in value:
            yield from _named_variables(item, key)
    elif isinstance(value, str) and key.endswith("_env"):
        yield value


def _upstream_from_environment(env: Mapping[str, str]) -> _Found:
    found: _Found = {}
    key_name = next((name for name in KEY_VARIABLES if env.get(name)), None)
    if key_name:
        found[("upstream", "api_key")] = (env[key_name], key_name)
    url_name = next((name for name in BASE_URL_VARIABLES if env.get(name)), None)
    if url_name:
        found[("upstream", "base_url")] = (env[url_name], url_name)
    return found


def _process_from_environment(env: Mapping[str, str]) -> _Found:
    found: _Found = {}
    if env.get(PORT_VARIABLE):
        found[("process", "port")] = (env[PORT_VARIABLE], PORT_VARIABLE)
    if env.get(METRICS_DIR_VARIABLE):
        found[("process", "metrics_dir")] = (env[METRICS_DIR_VARIABLE], METRICS_DIR_VARIABLE)
    return found


def _describe(exc: ValidationError, sources: _Sources) -> str:
    """One line: the setting, what was expected, and where its value came from."""
    error = exc.errors()[0]
    loc = tuple(str(part) for part in error["loc"])
    path = ".".join(loc)
    source = sources.of(loc)
    where = f" (from {source})" if source else ""
    if loc[:2] == ("upstream", "api_key"):
        return f"setting upstream.api_key: expected a non-empty string{where}"
    if error["type"] == "extra_forbidden":
        return f"setting {path}: no such setting{_closest(loc)}{where}"
    # The value itself is not echoed: it may be a key pasted into the wrong variable.
    return f"setting {path}: {error['msg'].removeprefix('Value error, ')}{where}"


def _closest(loc: tuple[str, ...]) -> str:
    """A hint naming the known setting closest to a misspelled one."""
    if len(loc) == 1:
        candidates = [name for name in Settings.model_fields]
    else:
        section = Settings.model_fields.get(loc[0])
        model = section.annotation if section is not None else None
        fields = getattr(model, "model_fields", {})
        candidates = [f"{loc[0]}.{name}" for name in fields]
    close = difflib.get_close_matches(".".join(loc), candidates, n=1)
    return f"; did you mean {close[0]}?" if close else ""


def _auth_from_environment(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    """Read the token secret and every `key_env` key from the environment; keep only hashes of keys."""
    auth = raw.get("auth")
    if not isinstance(auth, dict):
        return
    secret_env = auth.get("secret_env")
    if isinstance(secret_env, str) and env.get(secret_env):
        auth["secret"] = env[secret_env]
    for key in auth.get("keys") or ():
        if not isinstance(key, dict) or not isinstance(key.get("key_env"), str):
            continue
        value = env.get(key["key_env"])
        if not value:
            raise SettingsError(f"setting auth.keys {key.get('name')!r}: variable {key['key_env']} is not set")
        key["key_sha256"] = hashlib.sha256(value.encode()).hexdigest()
        key["key_env"] = None


def _resolve_upstream_keys(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    """Give each [[upstreams]] entry the key its `api_key_env` variable holds."""
    entries = raw.get("upstreams")
    if not isinstance(entries, list):
        return
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        if "api_key" in entry:
            raise SettingsError(
                f"setting upstreams[{index}].api_key: keys are never written in a file; "
                "name an environment variable in api_key_env"
            )
        variable = entry.get("api_key_env")
        if isinstance(variable, str) and variable:
            if not env.get(variable):
                raise SettingsError(f"setting upstreams[{index}].api_key_env: variable {variable} is not set")
            entry["api_key"] = env[variable]
