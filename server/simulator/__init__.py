"""Sluice's simulated OpenAI-compatible chat model (an aiohttp app).

Deterministic replies, per-request steering (`sim` body field or a `#sim`
line in the last user message), fault injection and a record of what it saw
under `/_sim/*`.
"""

from .app import create_simulator_app
from .keys import RUNTIME_KEY, SETTINGS_KEY, STATS_KEY
from .plan import Fault
from .settings import DEFAULT_MODELS, Pace
from .stats import Outcome

__all__ = [
    "DEFAULT_MODELS",
    "RUNTIME_KEY",
    "SETTINGS_KEY",
    "STATS_KEY",
    "Fault",
    "Outcome",
    "Pace",
    "create_simulator_app",
]
