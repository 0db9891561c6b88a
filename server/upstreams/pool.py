"""Pick an upstream for a model: weighted power of two choices by requests in flight."""

from __future__ import annotations

import random
from collections.abc import Sequence

from .client import UpstreamClient

SERVING_CACHE_SIZE = 1024


class Pool:
    """Every configured upstream; `serving(model)` is the pool of one model."""

    def __init__(self, clients: Sequence[UpstreamClient], rng: random.Random | None = None) -> None:
        self.clients = tuple(clients)
        self._rng = rng or random.Random()
        # The configuration does not change while serving: each model's pool is found once.
        self._serving: dict[str, tuple[UpstreamClient, ...]] = {}

    def serving(self, model: str) -> tuple[UpstreamClient, ...]:
        """The upstreams configured for `model`, in configuration order."""
        found = self._serving.get(model)
        if found is None:
            if len(self._serving) >= SERVING_CACHE_SIZE:
                self._serving.clear()  # with `models = ["*"]` clients name models freely: stay bounded
            found = self._serving[model] = tuple(client for client in self.clients if client.entry.serves(model))
        return found

    def pick(self, candidates: Sequence[UpstreamClient]) -> UpstreamClient | None:
        """Two candidates drawn by weight; the one with fewer requests in flight per weight wins."""
        open_slots = [client for client in candidates if not client.full]
        if not open_slots:
            return None
        if len(open_slots) == 1:
            return open_slots[0]
        weights = [client.entry.weight for client in open_slots]
        first = self._rng.choices(open_slots, weights)[0]
        rest = [client for client in open_slots if client is not first]
        second = self._rng.choices(rest, [client.entry.weight for client in rest])[0]
        return min((first, second), key=lambda client: client.in_flight / client.entry.weight)
