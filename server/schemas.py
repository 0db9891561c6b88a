"""The original API's request and response bodies (`/chat`, `/chat/stream`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from .settings import Settings
from .upstreams.portable import ASK_USAGE, OwnTokenLimit
from .validation import MAX_TOKEN_LIMIT


def _settings(info: ValidationInfo) -> Settings:
    context = info.context
    if not isinstance(context, dict) or not isinstance(context.get("settings"), Settings):
        raise RuntimeError("ChatRequest must be validated with the settings in its context")
    settings: Settings = context["settings"]
    return settings


class HistoryMessage(BaseModel):
    """One earlier turn of the conversation."""

    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    """`POST /chat` and `POST /chat/stream`; unknown fields are ignored."""

    model_config = ConfigDict(strict=True)

    message: str
    history: list[HistoryMessage] = Field(default_factory=list)
    model: str | None = None
    system: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    # Bounded as on /v1 (see MAX_TOKEN_LIMIT): the key's reservation is read from it.
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKEN_LIMIT)

    @field_validator("message")
    @classmethod
    def _message_fits(cls, value: str, info: ValidationInfo) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        limit = _settings(info).limits.max_message_chars
        if len(value) > limit:
            raise ValueError(f"must be at most {limit} characters")
        return value

    @field_validator("system")
    @classmethod
    def _system_fits(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Bounded as every message is: unbounded, it was the one field past the limit.
        limit = _settings(info).limits.max_message_chars
        if value is not None and len(value) > limit:
            raise ValueError(f"must be at most {limit} characters")
        return value

    @field_validator("history")
    @classmethod
    def _history_fits(cls, value: list[HistoryMessage], info: ValidationInfo) -> list[HistoryMessage]:
        limits = _settings(info).limits
        if len(value) > limits.max_history_messages:
            raise ValueError(f"must have at most {limits.max_history_messages} entries")
        for index, entry in enumerate(value):
            if len(entry.content) > limits.max_message_chars:
                raise ValueError(f"entry {index} must be at most {limits.max_message_chars} characters")
        return value

    @field_validator("temperature", mode="before")
    @classmethod
    def _int_temperature_is_fine(cls, value: Any) -> Any:
        # Strict mode would refuse `"temperature": 1`; JSON has no separate integer type.
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value

    def upstream_body(self, model: str, *, stream: bool) -> dict[str, Any]:
        """The OpenAI chat-completions request this call becomes."""
        messages: list[dict[str, str]] = []
        if self.system is not None:
            messages.append({"role": "system", "content": self.system})
        messages.extend({"role": m.role, "content": m.content} for m in self.history)
        messages.append({"role": "user", "content": self.message})
        body: dict[str, Any] = {"model": model, "messages": messages}
        # Both fields are Sluice's own: a portable upstream gets neither (see upstreams/portable.py).
        if stream:
            body["stream"] = True
            body["stream_options"] = ASK_USAGE
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_completion_tokens"] = OwnTokenLimit(self.max_tokens)
        return body


class Usage(BaseModel):
    """Token counts as the upstream reports them."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatReply(BaseModel):
    """`POST /chat`'s answer."""

    response: str
    model: str
    finish_reason: str
    usage: Usage
