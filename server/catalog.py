"""Which model names a request may use: the configured list or "*", aliases, and the upstream's own list.

An alias resolves here, before the upstream is called, so the upstream and the reply see the real
model. With `models.discover`, the models the upstream lists (read by discovery.py) are accepted
and listed too; a failed read keeps the last list.
"""

from __future__ import annotations

from collections.abc import Iterable

from .errors import ModelNotFoundError
from .settings import ANY_MODEL, ModelSettings


class ModelCatalog:
    """The models this gateway serves, and the real model behind each name a client may send."""

    def __init__(self, settings: ModelSettings) -> None:
        self.default = settings.default
        self.aliases = dict(settings.aliases)
        self.forwards_any = ANY_MODEL in settings.available
        self._configured = tuple(name for name in settings.available if name != ANY_MODEL)
        self._discovered: tuple[str, ...] = ()
        self._accepted = frozenset(self._configured)

    @property
    def discovered(self) -> tuple[str, ...]:
        """The models the upstream listed at its last successful read."""
        return self._discovered

    def served(self) -> list[str]:
        """The real models known by name: the configured ones, the default, then the discovered ones.

        The default is listed even where `models.available` is "*" alone: it is the model a request
        naming none gets, and a client that lists the models to pick one should find it.
        """
        default = () if self.default in self.aliases else (self.default,)
        return list(dict.fromkeys((*self._configured, *default, *self._discovered)))

    def knows(self, model: str) -> bool:
        """True for a real model the gateway knows by name: configured, the default, an alias's target, or discovered.

        Read by the metrics (a model label is one of these, see metrics.py); `resolve` may pass other
        names through where `models.available` has "*".
        """
        return model in self._accepted or model == self.default or model in self.aliases.values()

    def names(self) -> list[str]:
        """Every name to list: the served models, then the aliases."""
        return list(dict.fromkeys((*self.served(), *self.aliases)))

    def resolve(self, name: str, *, listed_at: str) -> str:
        """The real model `name` stands for; 404 model_not_found (naming `listed_at`) if none is served."""
        model = self.aliases.get(name, name)
        if self.forwards_any or model in self._accepted:
            return model
        raise ModelNotFoundError(
            f"The model {name[:200]!r} is not available; GET {listed_at} lists the models.", param="model"
        )

    def update(self, discovered: Iterable[str]) -> None:
        """Take the upstream's current model list."""
        self._discovered = tuple(dict.fromkeys(discovered))
        self._accepted = frozenset((*self._configured, *self._discovered))
