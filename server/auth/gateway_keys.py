"""Gateway keys: find the configured key a request presents, by hash and in constant time.

Only SHA-256 hashes of keys are held. A presented key is hashed once and compared with every
configured hash using `hmac.compare_digest`, so neither the key nor which entry matched shows
in the time taken.

The ring also knows what runs under each key (its requests' leases, see gate.py): a reload that
removes a key, or gives its name another hash, ends them (`adopt`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from ..settings import AuthSettings
from .limits import KeyLimits

# Headers a key may come in: what the OpenAI SDKs send, then Azure's and the common alternative.
_KEY_HEADERS = ("api-key", "x-api-key")


@dataclass(frozen=True, slots=True)
class GatewayKey:
    """One configured key: its name (safe to log), its hash, its model allowlist and limits."""

    name: str
    digest: bytes
    models: frozenset[str] | None
    limits: KeyLimits

    def allows(self, model: str) -> bool:
        """True when the key may use `model`."""
        return self.models is None or model in self.models

    def fallbacks_allowed(self, aliases: Mapping[str, str]) -> Callable[[str], bool]:
        """Which models may answer this key's requests as fallbacks: its models, and those its aliases name.

        Fallback tables name real models; a key that lists `smart` (an alias of gpt-4o) may be
        answered by gpt-4o, as it may ask for it.
        """
        if self.models is None:
            return self.allows
        return (self.models | {aliases[name] for name in self.models if name in aliases}).__contains__


class Holder(Protocol):
    """What runs under a key (a request's lease): told when the key is revoked."""

    def revoke(self) -> None:
        """The key was removed or rotated: end what runs under it."""


class KeyRing:
    """The configured gateway keys, the optional separate key for /metrics, and what runs under each key."""

    def __init__(self, keys: tuple[GatewayKey, ...], metrics_digest: bytes | None) -> None:
        self._keys = keys
        self._by_name = {key.name: key for key in keys}
        self._metrics_digest = metrics_digest
        self._held: dict[str, set[Holder]] = {}
        self._metrics_held: set[Holder] = set()  # the open dashboard feeds, which the metrics key opened

    @classmethod
    def from_settings(cls, auth: AuthSettings) -> KeyRing:
        """Build the ring from the [auth] settings."""
        keys = tuple(
            GatewayKey(
                name=key.name,
                digest=bytes.fromhex(key.key_sha256 or ""),
                models=frozenset(key.models) if key.models is not None else None,
                limits=KeyLimits(
                    rpm=key.rpm, tpm=key.tpm, max_streams=key.max_streams, completion_reserve=key.completion_reserve
                ),
            )
            for key in auth.keys
        )
        metrics = bytes.fromhex(auth.metrics_key_sha256) if auth.metrics_key_sha256 else None
        return cls(keys, metrics)

    def adopt(self, other: KeyRing) -> list[str]:
        """Take `other`'s keys and metrics key in place (every holder of this ring sees them at once);
        end what runs under each key it revokes, and every dashboard feed when the metrics key
        changes. The names of the revoked keys.

        A key is revoked when `other` has no key of its name, or one with another hash (rotated).
        """
        revoked = [key.name for key in self._keys if not other.current(key)]
        metrics_changed = other._metrics_digest != self._metrics_digest
        self._keys, self._by_name, self._metrics_digest = other._keys, other._by_name, other._metrics_digest
        for name in revoked:
            for holder in self._held.pop(name, ()):
                holder.revoke()
        if metrics_changed:
            held, self._metrics_held = self._metrics_held, set()
            for holder in held:
                holder.revoke()
        return revoked

    def current(self, key: GatewayKey) -> bool:
        """True while `key` is configured as it was: under its name, with its hash."""
        configured = self._by_name.get(key.name)
        return configured is not None and configured.digest == key.digest

    def hold(self, key: GatewayKey, holder: Holder) -> bool:
        """Count `holder` as running under `key` until `let_go`; False, holding nothing, once `key` is revoked."""
        if not self.current(key):
            return False
        self._held.setdefault(key.name, set()).add(holder)
        return True

    def hold_metrics(self, holder: Holder) -> None:
        """Count `holder` (an open dashboard feed) as running under the metrics key: a reload that
        sets, changes or removes that key revokes it, as a rotated gateway key does its streams."""
        self._metrics_held.add(holder)

    def let_go_metrics(self, holder: Holder) -> None:
        """`holder` no longer runs under the metrics key."""
        self._metrics_held.discard(holder)

    def let_go(self, key: GatewayKey, holder: Holder) -> None:
        """`holder` no longer runs under `key`."""
        held = self._held.get(key.name)
        if held is not None:
            held.discard(holder)
            if not held:
                del self._held[key.name]

    @property
    def keys(self) -> tuple[GatewayKey, ...]:
        """The configured keys, in configuration order."""
        return self._keys

    @property
    def enabled(self) -> bool:
        """True when keys are configured."""
        return bool(self._keys)

    @property
    def metrics_closed(self) -> bool:
        """True when /metrics requires its own key."""
        return self._metrics_digest is not None

    def find(self, presented: str) -> GatewayKey | None:
        """The key whose hash matches `presented`, comparing against every key in constant time."""
        digest = _digest(presented)
        found: GatewayKey | None = None
        for key in self._keys:
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found

    def named(self, name: str) -> GatewayKey | None:
        """The key called `name` (a token names its key), or None once it is no longer configured."""
        return self._by_name.get(name)

    def opens_metrics(self, presented: str) -> bool:
        """True when `presented` is the /metrics key."""
        if self._metrics_digest is None:
            return True
        return hmac.compare_digest(_digest(presented), self._metrics_digest)


def _digest(presented: str) -> bytes:
    """SHA-256 of the bytes the client sent.

    aiohttp decodes header bytes that are not UTF-8 as lone surrogates, which a plain `encode()`
    refuses (a 500); `surrogateescape` gives the bytes back, so such a key is simply wrong.
    """
    return hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()


def presented_key(request: web.Request) -> str | None:
    """The key a request carries: `Authorization: Bearer KEY`, else `api-key` or `x-api-key`."""
    authorization = request.headers.get("Authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    for header in _KEY_HEADERS:
        value = request.headers.get(header, "").strip()
        if value:
            return value
    return None
