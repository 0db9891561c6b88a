"""Browser tokens: short-lived, HMAC-signed permission for one stream, carried in a URL.

EventSource cannot send headers, so an authenticated call mints a token and the browser puts it
in the stream's URL. A token names the key that minted it, a scope (one stream id, or the
one-step `GET /chat/stream` route) and when it expires; it stays valid until then, so the
browser's automatic reconnects keep working. Removing the key from the config revokes its tokens.

    token = base64url(key_name "|" scope "|" expires_unix) "." base64url(HMAC-SHA256(secret, payload))
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from ..settings import AuthSettings

# The scope of a token for the one-step `GET /chat/stream?message=...` route.
ONE_STEP_SCOPE = "chat-stream"


@dataclass(frozen=True, slots=True)
class Token:
    """A minted token and the unix time it expires at."""

    value: str
    expires_at: int


class TokenSigner:
    """Mint and check browser tokens with the configured secret."""

    def __init__(self, secret: bytes, ttl: float, clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self._ttl = ttl
        self._clock = clock

    def mint(self, key_name: str, scope: str) -> Token:
        """A token for `scope`, on behalf of the key called `key_name`."""
        expires_at = int(self._clock() + self._ttl)
        payload = f"{key_name}|{scope}|{expires_at}".encode()
        value = _encode(payload) + "." + _encode(self._sign(payload))
        return Token(value, expires_at)

    def verify(self, token: str, scope: str) -> str | None:
        """The key name a valid, unexpired token for `scope` carries; None for any other token."""
        encoded_payload, dot, encoded_signature = token.partition(".")
        if not dot:
            return None
        try:
            payload = _decode(encoded_payload)
            signature = _decode(encoded_signature)
        except ValueError:
            return None
        if not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            key_name, token_scope, expires = payload.decode().split("|")
            expires_at = int(expires)
        except ValueError:
            return None
        if token_scope != scope or self._clock() >= expires_at:
            return None
        return key_name

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()


def token_secret(auth: AuthSettings) -> bytes:
    """The configured secret; without one, a random secret of this process (tokens then die with it)."""
    if auth.secret is not None:
        return auth.secret.get_secret_value().encode()
    if auth.enabled:
        structlog.get_logger("sluice.auth").warning(
            "token_secret_generated",
            message=f"{auth.secret_env} is not set: browser tokens are signed with a random secret of this "
            "process, so they stop working at a restart and across --workers or instances.",
        )
    return secrets.token_bytes(32)


def _encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _decode(text: str) -> bytes:
    if len(text) > 512:
        raise ValueError("token too long")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError("not base64url") from exc
