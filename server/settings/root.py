"""`Settings`: every section together, frozen once loaded."""

from __future__ import annotations

from pydantic import field_validator

from .auth import AuthSettings
from .base import Section
from .routing import ModelSettings, RoutingSettings, UpstreamEntry, UpstreamSettings
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


class Settings(Section):
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
    dashboard: DashboardSettings
    auth: AuthSettings
    routing: RoutingSettings
    upstreams: tuple[UpstreamEntry, ...] = ()

    @field_validator("upstreams")
    @classmethod
    def _upstream_names_are_unique(cls, upstreams: tuple[UpstreamEntry, ...]) -> tuple[UpstreamEntry, ...]:
        # A field's check, not the model's: the refusal then names the setting and its file.
        names = [entry.name for entry in upstreams]
        if len(names) != len(set(names)):
            raise ValueError("every [[upstreams]] entry needs its own name")
        return upstreams

    process: ProcessSettings = ProcessSettings()

    @property
    def simulated(self) -> bool:
        """True when no upstream key or [[upstreams]] is configured and the simulated model answers."""
        return self.upstream.api_key is None and not self.upstreams

    def upstream_entries(self, simulator_url: str | None = None) -> tuple[UpstreamEntry, ...]:
        """The configured upstreams; without [[upstreams]], one named `default` from [upstream]."""
        if self.upstreams:
            return self.upstreams
        upstream = self.upstream
        base_url = simulator_url or upstream.base_url
        return (
            UpstreamEntry(
                name="default",
                base_url=base_url,
                api_key=upstream.api_key,
                api_key_header=upstream.api_key_header,
                portable_body=upstream.portable_body,
            ),
        )
