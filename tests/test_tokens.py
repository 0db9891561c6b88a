"""Browser tokens and key rotation: a token stands for its key only while the key keeps its hash.

The process-level proof (SIGHUP on `python run.py`) is in tests/test_key_reload.py; these check the
signer alone, with a ring rebuilt the way a reload rebuilds it (`KeyRing.adopt`).
"""

from __future__ import annotations

import base64
import hashlib

from server.auth.gateway_keys import KeyRing
from server.auth.tokens import TokenSigner
from server.settings import AuthSettings
from tests.conftest import make_settings

KEY = "sk-unit-token-key-0123456789"
ROTATED_KEY = "sk-unit-token-key-rotated-9876543210"
SECRET = {"SLUICE_AUTH_SECRET": "unit-secret"}


def auth_with(*keys: tuple[str, str]) -> AuthSettings:
    """[auth] settings holding each (name, key) given, by the key's hash."""
    entries = [{"name": name, "key_sha256": hashlib.sha256(key.encode()).hexdigest()} for name, key in keys]
    return make_settings(SECRET, auth={"keys": entries}).auth


def minted(signer: TokenSigner, ring: KeyRing, name: str) -> str:
    """A token for stream "s", minted as the gateway mints it: with the named key's hash."""
    key = ring.named(name)
    assert key is not None
    return signer.mint(key.name, "s", key_digest=key.digest).value


def test_a_token_stands_for_its_key_across_a_reload_that_keeps_the_keys_hash() -> None:
    ring = KeyRing.from_settings(auth_with(("unit", KEY)))
    signer = TokenSigner(b"secret", ttl=60)
    token = minted(signer, ring, "unit")
    ring.adopt(KeyRing.from_settings(auth_with(("unit", KEY), ("other", ROTATED_KEY))))
    key = signer.key_for(token, "s", ring)
    assert key is not None
    assert key.name == "unit"


def test_a_token_stands_for_no_key_once_its_key_is_rotated() -> None:
    ring = KeyRing.from_settings(auth_with(("unit", KEY)))
    signer = TokenSigner(b"secret", ttl=60)
    token = minted(signer, ring, "unit")
    ring.adopt(KeyRing.from_settings(auth_with(("unit", ROTATED_KEY))))
    assert signer.key_for(token, "s", ring) is None


def test_a_token_minted_without_its_keys_hash_stands_for_no_key() -> None:
    ring = KeyRing.from_settings(auth_with(("unit", KEY)))
    signer = TokenSigner(b"secret", ttl=60)
    assert signer.key_for(signer.mint("unit", "s").value, "s", ring) is None


def test_a_token_carries_neither_the_key_nor_its_hash() -> None:
    ring = KeyRing.from_settings(auth_with(("unit", KEY)))
    payload = minted(TokenSigner(b"secret", ttl=60), ring, "unit").split(".")[0]
    text = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    digest = hashlib.sha256(KEY.encode())
    for revealing in (KEY.encode(), digest.digest()[:4], digest.hexdigest()[:8].encode()):
        assert revealing not in text
