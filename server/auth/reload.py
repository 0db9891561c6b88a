"""Reload the gateway keys from the configuration while serving (on SIGHUP): rotate or revoke a key
without a restart.

Only `[auth]` keys and the metrics key change: every other setting still needs a restart, and a
reload that finds another changed names its sections (`settings_need_restart`, a warning). A
configuration that no longer loads, or that would turn gateway keys on or off (which decides the
middleware and CORS policy at start), is refused with one log line, and the current keys stay.
A key removed, or given another hash under its name, is revoked: what runs under it ends at once
(its streams with a `key_revoked` error event, see KeyRing.adopt).
A key given by `key_env` is read from this process's environment, which a reload cannot change:
rotate such a key by restarting, or give it as `key_sha256` in the file.
"""

from __future__ import annotations

import structlog

from ..settings import Settings, SettingsError, SettingsSource
from .gateway_keys import KeyRing

log = structlog.get_logger("sluice.auth")


def reload_keys(ring: KeyRing, source: SettingsSource, running: Settings) -> bool:
    """Give `ring` the keys the configuration holds now; True when they were taken.

    `running`: the settings the process started with, to name what the reload leaves as it was.
    """
    try:
        loaded = source.load()
        fresh = KeyRing.from_settings(loaded.auth)
    except SettingsError as exc:
        log.warning("gateway_keys_reload_failed", message=str(exc))
        return False
    if fresh.enabled != ring.enabled:
        log.warning(
            "gateway_keys_reload_failed",
            message="turning gateway keys on or off needs a restart; the current keys stay",
        )
        return False
    changed = [
        name for name in Settings.model_fields if name != "auth" and getattr(loaded, name) != getattr(running, name)
    ]
    if changed:  # said before the reload's own line, which tells a watcher the reload is over
        log.warning(
            "settings_need_restart",
            sections=changed,  # names only: a value may be a key pasted into the wrong place
            message="a reload takes only [auth]; these changed sections apply at the next restart",
        )
    revoked = ring.adopt(fresh)
    log.info(
        "gateway_keys_reloaded",
        keys=[key.name for key in fresh.keys],
        metrics_key=fresh.metrics_closed,
        revoked=revoked,
    )
    return True
