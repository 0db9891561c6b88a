"""Settings from the environment: `SLUICE_<SECTION>_<KEY>`, the upstream's usual variables, and keys by name.

Only this package reads the environment; a `SLUICE_` name that is no setting is refused, except
the ones Kubernetes sets for a Service named `sluice` or `sluice-*` (`_is_service_link`).
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, get_origin

from .base import SettingsError
from .root import Settings

ENV_PREFIX = "SLUICE_"
KEY_VARIABLES = ("AI_INTEGRATIONS_OPENAI_API_KEY", "OPENAI_API_KEY")
# What the generic SLUICE_<SECTION>_<KEY> mapping would make of upstream.api_key: refused.
KEY_SETTING_VARIABLE = "SLUICE_UPSTREAM_API_KEY"
BASE_URL_VARIABLES = ("AI_INTEGRATIONS_OPENAI_BASE_URL", "OPENAI_BASE_URL")
PORT_VARIABLE = "PORT"
METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

Found = dict[tuple[str, str], tuple[Any, str]]

# Kubernetes gives every pod variables for each Service of its namespace (enableServiceLinks, on
# unless a pod spec turns it off): a Service named `sluice` adds SLUICE_SERVICE_HOST, SLUICE_PORT
# and the like, one named `sluice-redis` SLUICE_REDIS_SERVICE_HOST. Refused as unknown settings,
# they stopped every pod of a Deployment whose Service has the obvious name. None is a setting's
# name, and each is taken only with the value Kubernetes gives it, so a mistake is still refused.
_SERVICE = r"SLUICE(?:_\w+)?"
_PORT = r"_PORT_\d+_(?:TCP|UDP|SCTP)"


def _is_ip(value: str) -> bool:
    """A cluster IP: never loopback or 0.0.0.0, which a user setting an address of Sluice's would write."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return False
    return not (address.is_loopback or address.is_unspecified)


def _is_port(value: str) -> bool:
    return re.fullmatch(r"\d{1,5}", value, re.ASCII) is not None


def _is_service_url(value: str) -> bool:
    protocol, _, rest = value.partition("://")
    host, _, port = rest.rpartition(":")
    if host.startswith("[") and host.endswith("]"):  # an IPv6 address, as Kubernetes joins it with a port
        host = host[1:-1]
    return protocol in ("tcp", "udp", "sctp") and _is_ip(host) and _is_port(port)


_SERVICE_LINKS: tuple[tuple[re.Pattern[str], Callable[[str], bool]], ...] = (
    (re.compile(rf"{_SERVICE}_SERVICE_HOST", re.ASCII), _is_ip),
    (re.compile(rf"{_SERVICE}_SERVICE_PORT(?:_\w+)?", re.ASCII), _is_port),
    (re.compile(rf"{_SERVICE}(?:_PORT|{_PORT})", re.ASCII), _is_service_url),
    (re.compile(rf"{_SERVICE}{_PORT}_PROTO", re.ASCII), lambda value: value in ("tcp", "udp", "sctp")),
    (re.compile(rf"{_SERVICE}{_PORT}_PORT", re.ASCII), _is_port),
    (re.compile(rf"{_SERVICE}{_PORT}_ADDR", re.ASCII), _is_ip),
)


def _is_service_link(name: str, value: str) -> bool:
    """Whether `name=value` is a variable Kubernetes sets for a Service, not a setting of Sluice's."""
    return any(pattern.fullmatch(name) and valid(value) for pattern, valid in _SERVICE_LINKS)


def from_environment(raw: Mapping[str, Any], env: Mapping[str, str]) -> Found:
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
    found: Found = {}
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in named:
            continue
        if name not in known:
            if _is_service_link(name, env[name]):
                continue
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else "; see config/default.toml for the settings"
            if name == f"{ENV_PREFIX}PORT":
                hint = f"; the port to listen on is {PORT_VARIABLE} or --port"
            raise SettingsError(f"environment variable {name}: no such setting{hint}")
        if name == KEY_SETTING_VARIABLE:
            # One documented name for the upstream key, the one hosting integrations set.
            raise SettingsError(
                f"environment variable {name}: the upstream key is read from {KEY_VARIABLES[0]} "
                f"(fallback {KEY_VARIABLES[1]}); set that instead"
            )
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


def upstream_from_environment(env: Mapping[str, str]) -> Found:
    found: Found = {}
    key_name = next((name for name in KEY_VARIABLES if env.get(name)), None)
    if key_name:
        found[("upstream", "api_key")] = (env[key_name], key_name)
    url_name = next((name for name in BASE_URL_VARIABLES if env.get(name)), None)
    if url_name:
        found[("upstream", "base_url")] = (env[url_name], url_name)
    return found


def process_from_environment(env: Mapping[str, str]) -> Found:
    found: Found = {}
    if env.get(PORT_VARIABLE):
        found[("process", "port")] = (env[PORT_VARIABLE], PORT_VARIABLE)
    if env.get(METRICS_DIR_VARIABLE):
        found[("process", "metrics_dir")] = (env[METRICS_DIR_VARIABLE], METRICS_DIR_VARIABLE)
    return found


def auth_from_environment(raw: dict[str, Any], env: Mapping[str, str]) -> None:
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


def refuse_key_in_file(table: Mapping[str, Any], source: str) -> None:
    """Refuse `[upstream] api_key` in a file: the key comes from the environment only."""
    upstream = table.get("upstream")
    if isinstance(upstream, Mapping) and "api_key" in upstream:
        raise SettingsError(
            f"setting upstream.api_key: keys are never written in a file; set {KEY_VARIABLES[0]} (from {source})"
        )


def resolve_upstream_keys(raw: dict[str, Any], env: Mapping[str, str]) -> None:
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
