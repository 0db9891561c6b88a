"""The CORS policy: which other sites' pages may call Sluice from a browser (applied by routes/cors.py).

- `*` answers with a literal `*`, never the caller's origin, and never allows credentials;
- an allowlisted origin is echoed (routes/cors.py adds `Vary: Origin`);
- `Origin: null` (sandboxed frames, `file:` pages, some redirects) is never allowed;
- an empty list means `*` while no gateway keys are configured, and no cross-origin access once
  they are.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    """The allowed origins; `any_origin` answers every origin with a literal `*`."""

    any_origin: bool
    origins: frozenset[str]

    @classmethod
    def from_settings(cls, origins: tuple[str, ...], *, keys_configured: bool) -> CorsPolicy:
        """The policy for the configured list (see the module docstring for an empty one)."""
        if not origins:
            return cls(any_origin=not keys_configured, origins=frozenset())
        return cls(any_origin="*" in origins, origins=frozenset(o for o in origins if o not in ("*", "null")))

    def allow_origin(self, origin: str | None) -> str | None:
        """The Access-Control-Allow-Origin value for `origin`, or None when it is not allowed."""
        if origin is None or origin == "null":
            return None
        if self.any_origin:
            return "*"
        return origin if origin in self.origins else None
