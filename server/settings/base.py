"""The base of every settings section, and the one error a wrong setting raises."""

from __future__ import annotations

from typing import Any, Literal, get_origin

from pydantic import BaseModel, ConfigDict, model_validator


class SettingsError(ValueError):
    """A setting is missing, malformed or out of range."""


class Section(BaseModel):
    """A frozen table of settings that refuses names it does not know."""

    # No infinite or NaN numbers: `inf` reaches no deadline, and turned into milliseconds or a
    # kernel option it is an OverflowError on a request instead of a refusal at start-up.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _lower_case_choices(cls, data: Any) -> Any:
        """Accept `INFO` for `info`: choices are lower case, and environment values often are not."""
        if not isinstance(data, dict):
            return data
        lowered = dict(data)
        for name, field in cls.model_fields.items():
            if get_origin(field.annotation) is Literal and isinstance(lowered.get(name), str):
                lowered[name] = lowered[name].lower()
        return lowered
