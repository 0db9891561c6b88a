"""Per-request steering: the `#sim` directive line and the `sim` body field.

Both carry the same keys (tokens, ttft_ms, gap_ms, fault, echo, chunk_chars, and for
resilience tests: fail_times, fault_at, retry_after, fault_model, reject_prefill, prefill_fault)
and are merged key by key, the body field winning. Unknown keys are ignored
so newer tests can talk to older simulators; bad values of known keys are
rejected so a typo in a test fails loudly instead of silently doing nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from .settings import Pace

DIRECTIVE_PREFIX = "#sim"
DEFAULT_CHUNK_CHARS = 8

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class Fault(StrEnum):
    """Failure modes a request can ask for."""

    NONE = "none"
    RATE_LIMIT = "rate_limit"
    SERVER_ERROR = "server_error"
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    CUT = "cut"
    HANG_FIRST = "hang_first"
    HANG_MID = "hang_mid"
    MALFORMED = "malformed"
    NO_DONE = "no_done"
    ERROR_EVENT = "error_event"  # mid-stream: OpenAI's error object, then the end of the body
    # The same, in other providers' forms (wire.py has each):
    ERROR_TEXT = "error_text"  # {"error": "<text>"}
    ERROR_BARE = "error_bare"  # {"error": {"message": ...}}, no type or code
    ERROR_NAMED = "error_named"  # an SSE event named error, its data {"message": ..., "type": ...}
    ERROR_OBJECT = "error_object"  # vLLM's {"object": "error", "message": ..., "code": 500}
    RESET = "reset"  # the connection closes before any response headers
    SILENT = "silent"  # no response headers at all, until the client leaves
    OVERLOADED = "overloaded"  # 503 with code "overloaded"
    CONTEXT_LENGTH = "context_length"  # 400 context_length_exceeded
    CONTENT_POLICY = "content_policy"  # 400 content_policy_violation
    ERROR_REPLY = "error_reply"  # 200 with OpenAI's error object as JSON, in place of the stream or completion


_FAULT_NAMES = frozenset(fault.value for fault in Fault)


class PlanError(ValueError):
    """A steering value could not be understood; maps to HTTP 400."""

    def __init__(self, key: str, value: object, reason: str = "") -> None:
        super().__init__(f"invalid sim value for {key!r}: {value!r}" + (f" ({reason})" if reason else ""))
        self.key = key


@dataclass(frozen=True, slots=True)
class Plan:
    """How to answer one request, after defaults and overrides are merged."""

    tokens: int
    ttft_ms: float
    gap_ms: float
    fault: Fault = Fault.NONE
    echo: bool = False
    chunk_chars: int = DEFAULT_CHUNK_CHARS
    # The fault strikes only the first `fail_times` attempts of a request id (0: every attempt).
    fail_times: int = 0
    # Content tokens sent before a mid-stream fault (None: half of them).
    fault_at: int | None = None
    # Retry-After sent with rate_limit and overloaded: seconds, or "<n>ms" for retry-after-ms.
    retry_after: str | None = None
    # The fault strikes only requests for this model (None: any model).
    fault_model: str | None = None
    # Answer 400 invalid_prefill to a request whose last message is the assistant's.
    reject_prefill: bool = False
    # The fault for a request whose last message is the assistant's (a continuation), in place of `fault`.
    prefill_fault: Fault = Fault.NONE

    def fault_for(self, attempt: int, model: str) -> Fault:
        """The fault for attempt number `attempt` (1-based) of a request for `model`."""
        if self.fail_times and attempt > self.fail_times:
            return Fault.NONE
        if self.fault_model is not None and model != self.fault_model:
            return Fault.NONE
        return self.fault


def split_directive(text: str) -> tuple[str | None, str]:
    """Find the first `#sim` line in text.

    Returns (directive arguments or None, text without that line and the
    newline after it). Only "\\n" ends a line: a "\\r" is payload, which keeps
    echoed text byte-exact.
    """
    if DIRECTIVE_PREFIX not in text:
        # Fast path: most prompts carry no directive.
        return None, text
    start = 0
    while True:
        end = text.find("\n", start)
        line = text[start:] if end < 0 else text[start:end]
        rest = line[len(DIRECTIVE_PREFIX) :]
        # "#simulate" is prose, not a directive.
        if line.startswith(DIRECTIVE_PREFIX) and (not rest or rest[0] in " \t\r"):
            after = len(text) if end < 0 else end + 1
            return rest, text[:start] + text[after:]
        if end < 0:
            return None, text
        start = end + 1


def parse_directive(arguments: str) -> dict[str, str | bool]:
    """Turn `tokens=5 echo` into {"tokens": "5", "echo": True}."""
    parsed: dict[str, str | bool] = {}
    for word in arguments.split():
        key, sep, value = word.partition("=")
        parsed[key] = value if sep else True
    return parsed


def resolve_plan(
    defaults: Pace,
    directive: Mapping[str, object],
    body: Mapping[str, object],
) -> Plan:
    """Merge defaults, directive and body overrides (body wins) into a Plan."""
    merged = {**directive, **body}
    return Plan(
        tokens=_as_int(merged, "tokens", defaults.tokens, minimum=0),
        ttft_ms=_as_ms(merged, "ttft_ms", defaults.ttft_ms),
        gap_ms=_as_ms(merged, "gap_ms", defaults.gap_ms),
        fault=_as_fault(merged),
        echo=_as_bool(merged, "echo"),
        chunk_chars=_as_int(merged, "chunk_chars", DEFAULT_CHUNK_CHARS, minimum=1),
        fail_times=_as_int(merged, "fail_times", 0, minimum=0),
        fault_at=_as_int(merged, "fault_at", -1, minimum=0) if "fault_at" in merged else None,
        retry_after=_as_text(merged, "retry_after"),
        fault_model=_as_text(merged, "fault_model"),
        reject_prefill=_as_bool(merged, "reject_prefill"),
        prefill_fault=_as_fault(merged, "prefill_fault"),
    )


def _as_text(values: Mapping[str, object], key: str) -> str | None:
    raw = values.get(key)
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise PlanError(key, raw)
    return str(raw)


def _as_int(values: Mapping[str, object], key: str, default: int, minimum: int) -> int:
    raw = values.get(key)
    if raw is None:
        return default
    # bool is an int subclass, but `tokens=true` is a mistake, not 1.
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise PlanError(key, raw)
    try:
        number = int(raw)
    except ValueError:
        raise PlanError(key, raw) from None
    if number < minimum:
        raise PlanError(key, raw)
    return number


def _as_ms(values: Mapping[str, object], key: str, default: float) -> float:
    raw = values.get(key)
    if raw is None:
        return default
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise PlanError(key, raw)
    try:
        number = float(raw)
    except ValueError:
        raise PlanError(key, raw) from None
    if not math.isfinite(number) or number < 0:
        raise PlanError(key, raw)
    return number


def _as_bool(values: Mapping[str, object], key: str) -> bool:
    raw = values.get(key)
    if raw is None or isinstance(raw, bool):
        return bool(raw)
    if isinstance(raw, str) and raw.lower() in _TRUE | _FALSE:
        return raw.lower() in _TRUE
    raise PlanError(key, raw)


def _as_fault(values: Mapping[str, object], key: str = "fault") -> Fault:
    raw = values.get(key)
    if raw is None or raw == "":
        return Fault.NONE
    if isinstance(raw, str) and raw in _FAULT_NAMES:
        return Fault(raw)
    raise PlanError(key, raw)
