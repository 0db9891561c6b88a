"""Typed application keys: all simulator state hangs off the app."""

from __future__ import annotations

from aiohttp import web

from .runtime import Runtime
from .settings import SimulatorSettings
from .stats import StatsRegistry

SETTINGS_KEY = web.AppKey("sluice_simulator_settings", SimulatorSettings)
STATS_KEY = web.AppKey("sluice_simulator_stats", StatsRegistry)
RUNTIME_KEY = web.AppKey("sluice_simulator_runtime", Runtime)
