"""Map an upstream's failure onto the gateway's errors: one small table, no SDK.

    upstream answer                          client sees                      retried
    connection refused, reset, DNS           502 upstream_unreachable          yes
      (before any byte of the response)
    a response cut short, or not HTTP/1.1    502 upstream_malformed_reply      another route
      (a folded header, bare LF, two lengths: not asked again, its answer may be paid for)
    connect timeout, 408                     504 upstream_timeout              yes
    no headers within header_timeout         504 header_timeout                another route
    no first token within the deadline       504 first_token_timeout           another route
    401, 403                                 502 upstream_auth_failed          another route
    429                                      429 + its Retry-After             yes
    503, 529                                 503 + its code and Retry-After    yes
    500, 502, 504, other 5xx                 502 upstream_failed               500/502/504 yes
    200 not a chat completion (no stream)    502 upstream_malformed_reply      another route
      (a choice without a message too)
    200 encoded as Sluice does not decode    502 upstream_encoding_unsupported another route
      (a reply in br or zstd; a stream in any encoding)
    an event past max_upstream_event_bytes   502 upstream_event_too_large      before the first token
    200 with an error object (no stream)     502 with its message and code     yes
    200 with an error object (stream)        the same, before the first token  yes
    200 with other JSON (stream)             502 upstream_malformed_reply      another route
    200 neither JSON nor SSE (stream)        502 upstream_malformed_reply      another route
      (a Content-Type other than text/event-stream: an HTML page)
    an error event inside the stream         502 with its message and code     before the first token
      (and its type when OpenAI documents it, OPENAI_ERROR_TYPES; else upstream_error)
    other 4xx                                that status, its message/code     never

An upstream's 401/403 message may quote part of the gateway's key, so it is never passed on, nor
that of an error object that names a refused key (sent with 200, or inside a stream). Any other
message is passed on in whatever form it came (text, FastAPI's `detail`, an object or a list
rendered as text), bounded, any credential it quotes masked (see message_text, and `redact` for the
upstream's own key in any form); so is a 4xx's `text/plain` body, unless it is markup (a proxy's
HTML page sent as text: see _plain_text).

A Retry-After (or retry-after-ms, or a date) counts for at most MAX_RETRY_AFTER_SECONDS: what is
waited, held and passed on, so one header cannot take an upstream out until restart.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping
from typing import Any

import orjson

from ..errors import (
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRateLimitError,
    UpstreamRejectedError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)

MESSAGE_LIMIT = 1000
# The error types OpenAI's API reference (openapi.yaml) names for a failure: the Error object's
# `type` ("invalid_request_error", "server_error") and a failed generation's kinds ("server_error",
# "rate_limit_exceeded", "invalid_prompt"). An upstream's error event of one of these keeps its
# type: a client branches on OpenAI's names, and `server_error` is what OpenAI itself sends mid-stream.
OPENAI_ERROR_TYPES = frozenset({"invalid_request_error", "server_error", "rate_limit_exceeded", "invalid_prompt"})
# The most seconds one upstream's Retry-After (or retry-after-ms) is taken for: what a request
# waits, what a breaker holds, and what the client is told. A longer one (or a date years ahead)
# would shut an upstream that is healthy again until restart, out of reach of the probe; after
# this a trial tests it, as after any opening. The OpenAI SDKs ignore a retry-after above 60 s.
MAX_RETRY_AFTER_SECONDS = 60.0


def status_failure(status: int, headers: Mapping[str, str], content: bytes) -> UpstreamError:
    """The gateway error for an upstream's non-200 answer (`content`: its bounded body)."""
    fields = _error_fields(content)
    # A 4xx in plain text is the upstream telling the client what was wrong, as a JSON one would
    # (a 401/403's message, in any form, is hidden below). Not a 5xx's: that is mostly a proxy's
    # (Envoy's "upstream connect error ... reset reason"), about the provider's insides.
    if 400 <= status < 500 and (text := _plain_text(headers, content)):
        fields["message"] = text
    message, code, param = fields.get("message"), fields.get("code"), fields.get("param")
    retry_after = retry_after_seconds(headers)
    error: UpstreamError
    if status in (401, 403):
        error = UpstreamError("The gateway's upstream credentials were rejected.", code="upstream_auth_failed")
    elif status == 408:
        error = UpstreamTimeoutError("The upstream timed out reading the request.")
    elif status == 429:
        error = UpstreamRateLimitError(
            message or "The upstream is rate limiting.", code=code, headers=retry_after_header(retry_after)
        )
    elif status in (503, 529):
        error = UpstreamUnavailableError(
            message or "The upstream is overloaded.",
            code=code or "upstream_overloaded",
            headers=retry_after_header(retry_after),
        )
    elif 400 <= status < 500:
        error = UpstreamRejectedError(
            message or "The upstream rejected the request.",
            status=status,
            code=code or "upstream_rejected",
            param=param,
        )
    else:
        error = UpstreamError(f"The upstream failed with status {status}.", code="upstream_failed")
    error.reason = str(status)
    error.retry_after = retry_after
    return error


def connect_failure() -> UpstreamError:
    """The upstream could not be reached, or reset the connection before answering."""
    error = UpstreamError("The upstream could not be reached.", code="upstream_unreachable")
    error.reason = "connect"
    return error


def timeout_failure(
    code: str = "upstream_timeout", message: str = "The upstream did not answer in time."
) -> UpstreamError:
    """The upstream took too long: to connect (`upstream_timeout`), to answer, or to its first token."""
    error = UpstreamTimeoutError(message, code=code)
    error.reason = code
    return error


def reset_failure(message: str = "The upstream connection failed before the first token.") -> UpstreamError:
    """The stream broke, or ended, after the headers and before any content."""
    error = UpstreamProtocolError(message)
    error.reason = "reset"
    return error


def event_failure(fields: Mapping[str, Any]) -> UpstreamError:
    """An error event the upstream sent inside its stream (`fields`: its error object, see chunks.parse_full).

    Its message (bounded) and code are passed on, unless it refuses the gateway's key: that is
    judged as a 401 would be, its message hidden. Its type is kept when it is one of OpenAI's
    (OPENAI_ERROR_TYPES): OpenAI's own `server_error` reaches the client as `server_error`, as it
    would without Sluice in between. Any other type (a provider's own, as vLLM's
    `InternalServerError`, or none) is Sluice's `upstream_error`. The code stays Sluice's choice
    either way (the upstream's, else `upstream_failed`), and the status 502.
    """
    code = fields.get("code")
    if refuses_key(fields):
        return status_failure(401, {}, b"")
    error = UpstreamError(
        message_text(fields) or "The upstream failed mid-stream.",
        code=code if isinstance(code, str) and code else "upstream_failed",
    )
    kind = fields.get("type")
    if isinstance(kind, str) and kind in OPENAI_ERROR_TYPES:
        error.type = kind
    error.reason = "error_event"
    return error


def check_completion(reply: bytes) -> None:
    """Raise the failure a non-streaming `reply` stands for, unless it is a chat completion.

    A 200 is no promise of a completion: a proxy's HTML page, a truncated body, or an error sent
    with status 200 (some providers do: OpenAI's object, a text, vLLM's `"object": "error"`) would
    reach the client as `application/json` that no SDK can read. (Raised where made: a local naming
    the error would keep this frame, and what it holds, in a cycle with the error's traceback.)
    """
    body = _loads(reply)
    if isinstance(body, dict):
        choices = body.get("choices")
        # Each choice a message: `choices: [null]` or a choice without one reached an SDK as a 200 it
        # could not read, and no other upstream was asked.
        if (
            isinstance(choices, list)
            and choices
            and all(isinstance(choice, dict) and isinstance(choice.get("message"), dict) for choice in choices)
        ):
            return
        raise _reply_error(body, reply) or malformed_reply()
    raise malformed_reply()


def reply_failure(reply: bytes) -> UpstreamError:
    """The failure a JSON `reply` to a stream request stands for (sent with 200 in place of events).

    An error object in a form check_completion knows is that error, judged the same way; anything
    else (a whole chat completion from an upstream that does not stream, a proxy's JSON) is a reply
    that is not a stream, for another upstream to try.
    """
    return _reply_error(_loads(reply), reply) or malformed_reply(
        "The upstream answered the stream request with JSON, not an event stream."
    )


def _loads(reply: bytes) -> object:
    try:
        return orjson.loads(reply)
    except orjson.JSONDecodeError:
        return None


def _reply_error(body: object, reply: bytes) -> UpstreamError | None:
    """The error an upstream's JSON reply holds, in any of the forms providers send; None if none."""
    if isinstance(body, dict):
        if isinstance(body.get("error"), dict):
            return _error_in_reply(body["error"], reply)
        if isinstance(body.get("error"), str) and body["error"]:  # a provider's text error
            return _error_in_reply({"message": body["error"]}, reply)
        if body.get("object") == "error":  # vLLM's: its fields at the top level
            return _error_in_reply(body, reply)
    return None


def _error_in_reply(error: Mapping[str, Any], reply: bytes) -> UpstreamError:
    """An error object sent with status 200, judged as the status it names would be.

    A refusal of the request (a 4xx, or `invalid_request_error`) is not retried or held against
    the upstream; a refused key (`refuses_key`: 401/403, `invalid_api_key`) hides its message, which may quote
    part of the key; anything else is retried like an error event.
    """
    named = error.get("status", error.get("code"))
    status = named if isinstance(named, int) and not isinstance(named, bool) else None
    if refuses_key(error):
        status = 401
    elif status is None and error.get("type") == "invalid_request_error":
        status = 400
    if status is not None and 400 <= status < 500:
        return status_failure(status, {}, reply)
    return event_failure(error)


def malformed_reply(message: str = "The upstream's reply was not a chat completion.") -> UpstreamError:
    """An upstream reply that is not what was asked for: a chat completion, or an event stream."""
    return unusable_reply(message, code="upstream_malformed_reply")


def unusable_reply(message: str, *, code: str) -> UpstreamError:
    """A reply Sluice cannot relay (malformed, an encoding it does not decode, an event past its
    limit): judged as a malformed reply, so another candidate is asked and the breaker counts it
    (with no reason, it was neither, and a pool kept sending half its requests to the upstream)."""
    error = UpstreamProtocolError(message, code=code)
    error.reason = "malformed_reply"
    return error


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """`retry-after-ms`, else `Retry-After` (seconds or an HTTP date), as seconds; None if absent or bad.

    At most MAX_RETRY_AFTER_SECONDS, however long the upstream asked for.
    """
    seconds = _asked_seconds(headers, now)
    return None if seconds is None else min(seconds, MAX_RETRY_AFTER_SECONDS)


def _asked_seconds(headers: Mapping[str, str], now: float | None) -> float | None:
    """The wait the upstream's headers ask for, as they say it."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return value
    text = headers.get("retry-after")
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, OverflowError):  # OverflowError: an hour of 20 digits
            return None
        value = when.timestamp() - (time.time() if now is None else now)
        return max(0.0, value)
    return value if math.isfinite(value) and value >= 0 else None


def retry_after_header(seconds: float | None) -> dict[str, str]:
    """`retry-after-ms` as precise as the upstream said (whole milliseconds, rounded up: never sooner
    than it said), and Retry-After the same wait in whole seconds.

    The OpenAI SDKs read `retry-after-ms` first: a 1.5 s wait rounded up to 2 s, or 0.2 s to 1 s,
    cost each retry the difference.

    No wait at all ("retry now": a date already past, or `0`) is told as 1 s in both, so the two
    agree (they said `1` and `0`). A `0` is no hint to the SDKs: Python's ignores it and backs off
    on its own, Node's falls back to Retry-After, and a `Retry-After: 0` sends Node's retry at once.
    1 s is also the least Retry-After can say above 0. A wait shorter than Sluice's own hold of the
    upstream (a 429's RATE_LIMIT_SPACING) is raised to that hold by the routing
    (attempts._no_sooner_than_reopened).
    """
    if seconds is None:
        return {}
    millis = math.ceil(round(seconds * 1000, 3)) or 1000  # round first: 1.1 s is 1100.0000000000002 ms
    return {"Retry-After": str(math.ceil(millis / 1000)), "retry-after-ms": str(millis)}


def _error_fields(content: bytes) -> dict[str, str]:
    """message (see message_text), code and param of an error body; code and param when they are strings."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(body, dict):
        return {}
    error = body.get("error", body)
    if isinstance(error, str):  # a provider's text error: `{"error": "..."}`
        error = {"message": error}
    if not isinstance(error, dict):
        return {}
    found = {name: error.get(name) for name in ("code", "param")}
    fields = {name: value for name, value in found.items() if isinstance(value, str) and value}
    if message := message_text(error):
        fields["message"] = message
    return fields


def _plain_text(headers: Mapping[str, str], content: bytes) -> str:
    """A `text/plain` body as a message a client may see (safe_message); "" for any other body.

    Never markup: an HTML page sent as text/plain (a proxy's error page) says nothing to a client
    and may be large. A body that is JSON was read as JSON (_error_fields), its message or none.
    Read as UTF-8 whatever its charset says (ASCII, the default of text/plain, is UTF-8 too).
    """
    kind = (headers.get("content-type") or "").partition(";")[0].strip().lower()
    if kind != "text/plain" or isinstance(_loads(content), (dict, list)):
        return ""
    text = content.decode(errors="replace").strip()
    return "" if _MARKUP.search(text) else safe_message(text)


def message_text(error: Mapping[str, Any]) -> str:
    """An error object's message as a client may see it (safe_message); "" when it has none.

    Providers give it as text under `message`, or under `detail` (FastAPI's servers), or as an
    object or a list there (FastAPI's validation errors, Mistral's `{"message": {"detail": [...]}}`):
    those are rendered as text, not dropped.
    """
    message = error.get("message") or error.get("detail")
    return safe_message(_as_text(message)) if message else ""


def _as_text(value: object, depth: int = 0) -> str:
    """A message in any of its forms as one line of text (a bounded body's: its work is bounded too)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and depth < 2 and (inner := value.get("message") or value.get("detail")):
        return _as_text(inner, depth + 1)  # Mistral's: FastAPI's detail inside the message
    if isinstance(value, list) and value and all(isinstance(item, dict) and "msg" in item for item in value):
        # Validation errors: where and what, without the `input` each quotes (the request itself).
        return "; ".join(_validation_error(item) for item in value)
    return orjson.dumps(value).decode()


def _validation_error(item: Mapping[str, Any]) -> str:
    """One of FastAPI's (pydantic's) validation errors, `{"loc": ["body", "x"], "msg": ...}`, as `body.x: msg`."""
    loc = item.get("loc")
    where = ".".join(map(str, loc)) if isinstance(loc, list) else ""
    return f"{where}: {item['msg']}" if where else str(item["msg"])


# What an upstream says when it refuses the gateway's own credentials, in the forms providers use.
_KEY_REFUSALS = frozenset({"invalid_api_key", "401", "403", "unauthorized", "forbidden", "authentication_error"})
_KEY_REFUSING_TYPES = frozenset({"authentication_error", "permission_error", "unauthorized"})
# A tag (`<html>`, `</p>`, `<!DOCTYPE html>`, `<?xml ...>`): a text that has one is markup, not a
# message. "must be <5" or "a < b" has none.
_MARKUP = re.compile(r"<[!/?]?[A-Za-z][^<>]*>")
# A credential quoted in a message: OpenAI-style keys (sk-, sk-proj-, pk-, rk-), and bearer tokens.
_CREDENTIAL = re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_\-.*]{4,}|\b[Bb]earer\s+\S+")


# A run of characters a key is written in, with what may join it to its neighbours (`key=...`, a
# URL, base64's padding): each run of 8 or more is checked against the upstream's own key.
_KEY_RUN = re.compile(r"[A-Za-z0-9_\-.+/=:]{8,}")
REDACTED = "[redacted]"


KeyPieces = frozenset[str]
QUOTED = 8  # characters in a row of the key that a message may not quote


def key_pieces(secret: str | None) -> KeyPieces:
    """Every run of QUOTED characters of the upstream's key, lower-cased: what `redact` looks for.

    Made once per upstream: a long key (a JWT) made per message cost milliseconds of the loop.
    """
    if not secret or len(secret) < QUOTED:
        return frozenset()
    key = secret.lower()
    return frozenset(key[start : start + QUOTED] for start in range(len(key) - QUOTED + 1))


def redact(message: str, pieces: KeyPieces) -> str:
    """`message` with the upstream's own key masked wherever it quotes it, whole or in part.

    The patterns of safe_message know OpenAI's key forms only; a provider's (Groq's `gsk_`,
    Google's `AIza`, Azure's hex) went through whole. Any run of key characters that shares
    QUOTED in a row with the key is masked whole, case aside (a message may upper-case what it
    quotes). A key of ordinary words (a placeholder such as `sk-no-key-required`) masks those words
    too: a word lost from an error is the price of never passing a key on.
    """
    if not pieces:
        return message

    def masked(run: re.Match[str]) -> str:
        found = run.group(0).lower()
        quoted = any(found[start : start + QUOTED] in pieces for start in range(len(found) - QUOTED + 1))
        return REDACTED if quoted else run.group(0)

    return _KEY_RUN.sub(masked, message)


def redacted(error: UpstreamError, pieces: KeyPieces) -> UpstreamError:
    """`error`, its message with the upstream's own key masked (`redact`)."""
    if pieces:
        error.message = redact(error.message, pieces)
        error.args = (error.message,)
    return error


def refuses_key(fields: Mapping[str, Any]) -> bool:
    """Whether an upstream's error object refuses the gateway's credentials (its message may quote them)."""
    code, kind, status = fields.get("code"), fields.get("type"), fields.get("status")
    return (
        (isinstance(code, str) and code.lower() in _KEY_REFUSALS)
        or code in (401, 403)
        or status in (401, 403, "401", "403")
        or (isinstance(kind, str) and kind.lower() in _KEY_REFUSING_TYPES)
    )


def safe_message(message: str) -> str:
    """An upstream's message as a client may see it: bounded, and any credential it quotes masked.

    A key can appear outside a refusal too (a provider's text error, "invalid api key sk-..."),
    so every message passed on is masked, not only those of errors known to refuse a key.
    """
    return _CREDENTIAL.sub(REDACTED, message[:MESSAGE_LIMIT])
