"""Sluice's simulated OpenAI-compatible chat model (an aiohttp app).

Deterministic replies, per-request steering (`sim` body field or a `#sim`
line in the last user message), fault injection and a record of what it saw
under `/_sim/*`.

OpenAI's `n` (an integer from 1 to 128; anything else is a 400 naming "n") asks
for that many choices, index 0 first. Choice 0 is the reply n=1 would give;
each further generated choice has words of its own, still deterministic, while
an echo repeats the same text in every choice. Usage counts completion tokens
over all choices. Streamed, the role chunks of every choice come first, then
each token step sends one chunk per choice in index order, then every choice's
own finish chunk, then the usage chunk (with include_usage) and `[DONE]`.
Steering applies to the whole response: choices share pace, length and finish
reason, and a fault strikes the response once (mid-stream: at the same step).
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
