"""Sluice's settings: config/default.toml, an optional overlay file, then the environment.

The result is a frozen, validated `Settings`. Only this package reads files and the environment;
everything else receives the object. A wrong value raises `SettingsError` with one line naming
the setting and what was expected. The sections live by concern: `sections` (this process),
`routing` (upstreams and models), `auth` (gateway keys); `loading` and `environment` read them.
"""

from .auth import AuthSettings, GatewayKeySettings
from .base import SettingsError
from .environment import METRICS_DIR_VARIABLE
from .loading import DEFAULT_CONFIG, SettingsSource, child_environment, load_settings
from .root import Settings
from .routing import ANY_MODEL, ModelSettings, RoutingSettings, UpstreamEntry, UpstreamSettings
from .sections import (
    BrowserSettings,
    ConnectionSettings,
    DashboardSettings,
    LimitSettings,
    LoggingSettings,
    ProcessSettings,
    RedisSettings,
    ServerSettings,
    SimulatorSettings,
    StreamSettings,
)

__all__ = [
    "ANY_MODEL",
    "DEFAULT_CONFIG",
    "METRICS_DIR_VARIABLE",
    "AuthSettings",
    "BrowserSettings",
    "ConnectionSettings",
    "DashboardSettings",
    "GatewayKeySettings",
    "LimitSettings",
    "LoggingSettings",
    "ModelSettings",
    "ProcessSettings",
    "RedisSettings",
    "RoutingSettings",
    "ServerSettings",
    "Settings",
    "SettingsError",
    "SettingsSource",
    "SimulatorSettings",
    "StreamSettings",
    "UpstreamEntry",
    "UpstreamSettings",
    "child_environment",
    "load_settings",
]
