"""Load the settings once: config/default.toml, an optional overlay file, the environment, then validate."""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .base import SettingsError
from .environment import (
    KEY_VARIABLES,
    METRICS_DIR_VARIABLE,
    auth_from_environment,
    from_environment,
    process_from_environment,
    refuse_key_in_file,
    resolve_upstream_keys,
    upstream_from_environment,
)
from .root import Settings

# server/config links to the repository's config/, and is packaged: one path from a clone or a wheel.
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "config" / "default.toml"


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
        refuse_key_in_file(overlay, f"--config file {config_path}")
        sources.note(overlay, f"--config file {config_path}")
        _merge(raw, overlay)
    for layer in (from_environment(raw, env), upstream_from_environment(env), process_from_environment(env)):
        for (section, key), (value, variable) in layer.items():
            table = raw.setdefault(section, {})
            if isinstance(table, dict):  # else the section is refused whole, blaming what replaced it
                table[key] = value
                sources.by_setting[(section, key)] = f"environment variable {variable}"
    resolve_upstream_keys(raw, env)
    for section, values in (overrides or {}).items():
        _merge(raw, {section: dict(values)})
    auth_from_environment(raw, env)
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, sources)) from None
    _refuse_an_upstream_without_a_key(settings, sources)
    return settings


def _refuse_an_upstream_without_a_key(settings: Settings, sources: _Sources) -> None:
    """Stop start-up when a base URL names the upstream but no key is set for it.

    Without a key Sluice answers from its simulated model; with a base URL set, that is a deploy
    whose key went missing (an empty variable, a misnamed secret), and it would serve made-up
    replies while `/readyz` said ready. An upstream that takes no key still needs one set: any value.
    """
    if not settings.simulated:
        return
    source = sources.by_setting.get(("upstream", "base_url"))
    if source is None or source == sources.defaults:
        return
    raise SettingsError(
        f"setting upstream.base_url (from {source}) names an upstream but no key is set for it: set "
        f"{KEY_VARIABLES[0]} (any value for an upstream that takes none), or leave the base URL unset "
        "to run on the simulated model"
    )


@dataclass(frozen=True, slots=True)
class SettingsSource:
    """Where this process's settings came from, to read them again (SIGHUP reloads the gateway keys)."""

    config_path: Path | None = None

    def load(self) -> Settings:
        """The settings as the files and the environment say now."""
        return load_settings(self.config_path)


def child_environment(metrics_dir: str) -> dict[str, str]:
    """This process's environment for a worker it starts, with the shared metrics directory."""
    return {**os.environ, METRICS_DIR_VARIABLE: metrics_dir}


class _Sources:
    """Where each setting's value came from, to name it when the value is wrong."""

    def __init__(self) -> None:
        self.by_setting: dict[tuple[str, ...], str] = {}
        # The first source noted: default.toml, which every other one overrides.
        self.defaults: str | None = None

    def note(self, table: Mapping[str, Any], source: str) -> None:
        """Record `table`'s settings as from `source`, over what was noted before."""
        if self.defaults is None:
            self.defaults = source
        for section, values in table.items():
            self.by_setting[(section,)] = source
            if isinstance(values, Mapping):
                for key in values:
                    self.by_setting[(section, key)] = source

    def of(self, loc: tuple[str, ...]) -> str | None:
        if len(loc) >= 2:
            return self.by_setting.get(loc[:2]) or self.by_setting.get(loc[:1])
        # A whole section was refused (e.g. a default model not in the list): name what overrode
        # the defaults in it; else whatever gave the section (a file's `server = 5`).
        overriding = sorted(
            {s for key, s in self.by_setting.items() if key[:1] == loc and len(key) == 2 and s != self.defaults}
        )
        return ", ".join(overriding) or self.by_setting.get(loc)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise SettingsError(f"--config file {path}: not found") from None
    except OSError as exc:
        # A directory, a file this user may not read: the reason only, as the OS words it.
        raise SettingsError(f"--config file {path}: cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        # Where, not what: the bytes may be part of a key.
        raise SettingsError(f"--config file {path}: not UTF-8 text (an invalid byte at offset {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"--config file {path}: not valid TOML: {exc}") from None


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


# What pydantic says when text reached a setting that takes a table or a list of tables.
_TABLE_ERRORS = frozenset({"dict_type", "model_type", "model_attributes_type"})


def _describe(exc: ValidationError, sources: _Sources) -> str:
    """One line: the setting, what was expected, and where its value came from."""
    error = exc.errors()[0]
    loc = tuple(str(part) for part in error["loc"])
    path = ".".join(loc)
    source = sources.of(loc)
    where = f" (from {source})" if source else ""
    if loc[:2] == ("upstream", "api_key"):
        return f"setting upstream.api_key: expected a non-empty string{where}"
    if error["type"] in _TABLE_ERRORS and source and source.startswith("environment variable"):
        # routing.fallbacks, auth.keys...: a variable holds text, and these take TOML tables.
        setting = ".".join(loc[:2])
        return f"setting {setting}: takes TOML tables, set in the --config file, not in the environment{where}"
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
