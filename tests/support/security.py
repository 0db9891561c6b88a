"""A gateway with gateway keys configured, for the security tests and the hostile corpus."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from pathlib import Path

from tests.support.processes import Gateway, Simulator, start_gateway, write_config

SECRET = "test-token-secret-0123456789abcdef"
KEY_ALPHA = "sk-gw-alpha-4f1c2d9e8b7a6c5d"  # all models, no limits
KEY_NARROW = "sk-gw-narrow-0a9b8c7d6e5f4a3b"  # gpt-4o-mini only
KEY_RPM = "sk-gw-rpm-1b2c3d4e5f6a7b8c"
KEY_TPM = "sk-gw-tpm-9f8e7d6c5b4a3f2e"
KEY_STREAMS = "sk-gw-streams-7c6b5a4f3e2d1c0b"
KEY_FROM_ENV = "sk-gw-from-env-5e4d3c2b1a0f9e8d"
METRICS_KEY = "sk-metrics-2d3c4b5a6f7e8d9c"
ORIGIN = "https://app.example"

RPM = 30
TPM = 400
# Under TPM, so one request without max_tokens fits a full bucket and a second does not fit beside it.
TPM_COMPLETION_RESERVE = 300


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def keys_toml(*, include_alpha: bool = True) -> str:
    """The [auth] section: one key per behaviour under test."""
    alpha = f'[[auth.keys]]\nname = "alpha"\nkey_sha256 = "{sha256(KEY_ALPHA)}"\n' if include_alpha else ""
    return f"""
[auth]
metrics_key_sha256 = "{sha256(METRICS_KEY)}"

{alpha}
[[auth.keys]]
name = "narrow"
key_sha256 = "{sha256(KEY_NARROW)}"
models = ["gpt-4o-mini"]

[[auth.keys]]
name = "rpm"
key_sha256 = "{sha256(KEY_RPM)}"
rpm = {RPM}

[[auth.keys]]
name = "tpm"
key_sha256 = "{sha256(KEY_TPM)}"
tpm = {TPM}
completion_reserve = {TPM_COMPLETION_RESERVE}

[[auth.keys]]
name = "streams"
key_sha256 = "{sha256(KEY_STREAMS)}"
max_streams = 1

[[auth.keys]]
name = "from-env"
key_env = "TEST_GATEWAY_KEY"
"""


def start_keyed_gateway(
    tmp: Path,
    upstream: Simulator,
    *,
    include_alpha: bool = True,
    extra_toml: str = "",
    env: Mapping[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> Gateway:
    """`python run.py` with the keys above, the token secret, and an allowlisted CORS origin."""
    config = write_config(tmp / "keys.toml", keys_toml(include_alpha=include_alpha) + extra_toml)
    environment = {
        "SLUICE_AUTH_SECRET": SECRET,
        "TEST_GATEWAY_KEY": KEY_FROM_ENV,
        "SLUICE_SERVER_CORS_ORIGINS": ORIGIN,
        **(env or {}),
    }
    return start_gateway(upstream=upstream, env=environment, config=config, args=args)


async def body_awaited(
    gateway: Gateway, key: str, length: int, bound: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A keyed `POST /chat` declaring `length` body bytes with `Expect: 100-continue`, once the gateway
    said `100 Continue` (within `bound` seconds): the request now waits for its body, none sent yet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", int(gateway.url.rsplit(":", 1)[1]))
    writer.write(
        b"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
        + f"Content-Length: {length}\r\nAuthorization: Bearer {key}\r\n\r\n".encode()
    )
    async with asyncio.timeout(bound):
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    return reader, writer
