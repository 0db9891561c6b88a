"""Browser tokens: short-lived, HMAC-signed permission for one stream, carried in a URL.

EventSource cannot send headers, so an authenticated call mints a token and the browser puts it
in the stream's URL. A token names the key that minted it, a fingerprint of that key's hash, a
scope (one stream id, or the one-step `GET /chat/stream` route) and when it expires; it stays
valid until then, so the browser's automatic reconnects keep working. Removing the key from the
config revokes its tokens, and so does rotating it (another hash under the same name): a token
stands for its key only while the key has the hash the token was minted with.

    token = base64url(key_name "|" fingerprint "|" scope "|" expires_unix) "." base64url(HMAC-SHA256(secret, payload))
    fingerprint = hex(HMAC-SHA256(secret, "key-fingerprint|" sha256(key))[:8])

The fingerprint is keyed with the secret: a token tells its holder nothing about the key's hash,
not even enough to check a guess at a weak key offline.

The same fingerprint names who owns a browser stream (`stream_owner`): `key_name ":" fingerprint`,
kept with the stream (in Redis too), so a key rotated under the same name does not inherit the
streams of the key it replaced. Instances sharing Redis therefore need the same secret to agree on
a stream's owner, as they do to accept each other's tokens.
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
from .gateway_keys import GatewayKey, KeyRing

# The scope of a token for the one-step `GET /chat/stream?message=...` route.
ONE_STEP_SCOPE = "chat-stream"
# Bytes of the key's fingerprint a token carries: enough that a rotated key's never matches by chance.
_FINGERPRINT_BYTES = 8
# Keeps the fingerprint's HMAC apart from the tokens' own signatures under the same secret.
_FINGERPRINT_CONTEXT = b"key-fingerprint|"


@dataclass(frozen=True, slots=True)
class _Claim:
    """What a valid token for the scope asked about says: its key's name and hash's fingerprint."""

    key_name: str
    fingerprint: str


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

    def mint(self, key_name: str, scope: str, *, key_digest: bytes = b"") -> Token:
        """A token for `scope`, on behalf of the key called `key_name` whose hash is `key_digest`.

        The gateway always passes the digest: a token minted without it stands for no configured key.
        """
        expires_at = int(self._clock() + self._ttl)
        payload = f"{key_name}|{self._fingerprint(key_digest)}|{scope}|{expires_at}".encode()
        value = _encode(payload) + "." + _encode(self._sign(payload))
        return Token(value, expires_at)

    def key_for(self, token: str, scope: str, keys: KeyRing) -> GatewayKey | None:
        """The key in `keys` that a valid, unexpired token for `scope` stands for; None for any other
        token, and for one whose key was removed or rotated (given another hash) since it was minted.
        """
        claim = self._claim(token, scope)
        if claim is None:
            return None
        key = keys.named(claim.key_name)
        # The claim is signed, so its holder cannot vary the fingerprint: a plain comparison hides nothing.
        if key is None or claim.fingerprint != self._fingerprint(key.digest):
            return None
        return key

    def stream_owner(self, key: GatewayKey) -> str:
        """Who a browser stream started with `key` belongs to: its name and its hash's fingerprint.

        Never the key or its plain hash: the value is stored in Redis. A rotated key (another hash
        under the same name) gets another value, so it neither reads nor stops its predecessor's streams.
        """
        return f"{key.name}:{self._fingerprint(key.digest)}"

    def _claim(self, token: str, scope: str) -> _Claim | None:
        """What `token` says, when it is signed with the secret, for `scope` and unexpired."""
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
            key_name, fingerprint, token_scope, expires = payload.decode().split("|")
            expires_at = int(expires)
        except ValueError:
            return None
        if token_scope != scope or self._clock() >= expires_at:
            return None
        return _Claim(key_name, fingerprint)

    def _fingerprint(self, key_digest: bytes) -> str:
        """A short, keyed fingerprint of a key's hash: it changes when the key is rotated, and reveals nothing."""
        mac = hmac.new(self._secret, _FINGERPRINT_CONTEXT + key_digest, hashlib.sha256)
        return mac.digest()[:_FINGERPRINT_BYTES].hex()

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()


# Bytes a configured secret needs to resist an offline guess from any token (its payload is readable).
SECRET_MIN_BYTES = 32


def token_secret(auth: AuthSettings) -> bytes:
    """The configured secret; without one, a random secret of this process (tokens then die with it).

    A configured secret shorter than SECRET_MIN_BYTES is used, and warned about: a token's payload is
    readable, so a short secret can be found offline from any token, and then any key's tokens forged.
    """
    if auth.secret is not None:
        secret = auth.secret.get_secret_value().encode()
        if len(secret) < SECRET_MIN_BYTES:
            structlog.get_logger("sluice.auth").warning(
                "token_secret_weak",
                message=f"{auth.secret_env} is {len(secret)} bytes: browser tokens signed with it can be "
                f"forged once it is guessed offline. Use at least {SECRET_MIN_BYTES} random bytes "
                "(openssl rand -hex 32).",
            )
        return secret
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
