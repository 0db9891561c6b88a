"""The `[auth]` section: gateway keys, their limits, and the browser-token secret."""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator

from .base import Section

_SHA256_HEX = r"^[0-9a-f]{64}$"


class GatewayKeySettings(Section):
    """One gateway key: its name, its hash (or the variable holding the key), its models and limits."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    key_sha256: str | None = Field(default=None, pattern=_SHA256_HEX)
    key_env: str | None = Field(default=None, min_length=1)
    models: tuple[str, ...] | None = None
    rpm: int = Field(default=0, ge=0)
    tpm: int = Field(default=0, ge=0)
    max_streams: int = Field(default=0, ge=0)
    # Reserved on tpm for the completion of a request that names no max_tokens (see auth/gate.py).
    completion_reserve: int = Field(default=1024, ge=0)

    @model_validator(mode="after")
    def _one_source(self) -> GatewayKeySettings:
        if (self.key_sha256 is None) == (self.key_env is None):
            raise ValueError(f"key {self.name!r}: set exactly one of key_sha256 and key_env")
        return self


class AuthSettings(Section):
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
