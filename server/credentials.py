"""Whether the upstream rejects the gateway's own key: shown by /readyz and logged as a warning."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

# The code an upstream 401 or 403 becomes (see errors.py): the gateway's credentials, not the client's.
REJECTED_CODE = "upstream_auth_failed"


@dataclass(slots=True)
class UpstreamCredentials:
    """The upstream's latest verdict on the gateway's key, as chat requests learn it."""

    rejected_since: str | None = None

    def note(self, error_code: str | None, *, answered: bool) -> None:
        """Record what one chat request learnt: its error code, and whether the upstream answered it."""
        if error_code == REJECTED_CODE:
            if self.rejected_since is None:
                self.rejected_since = datetime.now(UTC).isoformat(timespec="seconds")
        elif answered:
            self.rejected_since = None

    def detail(self) -> dict[str, str]:
        """What /readyz says about the key: nothing while it works."""
        if self.rejected_since is None:
            return {}
        return {
            "upstream_auth": "rejected",
            "upstream_auth_since": self.rejected_since,
            "hint": "the upstream refused the gateway's key (401/403): check AI_INTEGRATIONS_OPENAI_API_KEY",
        }
