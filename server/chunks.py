"""Read an upstream's SSE body into chat-completion chunks, keeping each chunk's bytes as received."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import orjson

DONE = b"[DONE]"


@dataclass(slots=True)
class Chunk:
    """One upstream event: its payload bytes as received and what the relay needs from them."""

    raw: bytes
    content: str | None = None
    # A delta of the answer itself: content, tool calls, a refusal or a function call.
    has_delta: bool = False
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    done: bool = False
    # With `n` > 1: the indexes of the choices this chunk finishes, and one more than the highest index in it.
    finished_choices: tuple[int, ...] = ()
    choices_seen: int = 0
    # A delta with something else than its role (`reasoning_content`, `reasoning`, `audio`, ...):
    # no text of the answer, and none to prefill a continuation with, but a token all the same,
    # relayed at once. `has_delta or other_delta`: the chunk carries a token.
    other_delta: bool = False


class MalformedChunk(ValueError):
    """An upstream event whose data is not a JSON object."""


# Default cap on one event (or line) from the upstream.
MAX_EVENT_BYTES = 1 << 20


class EventSplitter:
    """Split an SSE byte stream into the data of each event, as network reads deliver it.

    Comments and `event:`, `id:`, `retry:` fields are dropped, except that an event named `error`,
    or one with an `error:` field and no data (older llama.cpp servers), comes out as an error
    object whatever its data (see _error_data). Line endings may be `\n`, `\r\n` or `\r`, also
    split across reads. Works on whole reads, so one read holding several events costs one call,
    not one per line. Linear in the bytes received: an unfinished event is kept as a list of reads,
    each searched once and joined once when the event ends. An unfinished event over
    `max_event_bytes` sets `overflowed`; the caller ends the stream (nothing more is kept).
    """

    __slots__ = ("_after_cr", "_max", "_parts", "_size", "overflowed")

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._parts: list[bytes] = []
        self._size = 0
        # The last read ended in `\r`, taken for a line end at once: a `\n` opening the next read
        # is the second half of that `\r\n`, not a line end of its own.
        self._after_cr = False
        self.overflowed = False

    def feed(self, piece: bytes) -> list[bytes]:
        """The data of every event completed by `piece`."""
        if (
            not self._parts
            and not self._after_cr
            and piece.startswith(b"data: ")
            and piece.find(b"\n") == len(piece) - 2
            and piece.endswith(b"\n\n")
            and piece.find(b"\r") < 0
        ):
            # A paced upstream's read: one whole event of one data line (checked in C, not parsed).
            # `find`, not `in`: on Python 3.11 `bytes in bytes` first tries its operand as an
            # integer and builds a TypeError's message, on every call.
            return [piece[6:-2]]
        if self._after_cr and piece:
            self._after_cr = False
            if piece.startswith(b"\n"):
                piece = piece[1:]
        if piece.find(b"\r") >= 0:
            # A `\r` ending the read ends its line now, as in the WHATWG parser: held for a `\n` that
            # may never come, it kept a complete event (CR-only endings) until the next read.
            self._after_cr = piece.endswith(b"\r")
            piece = piece.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        found: list[bytes] = []
        start = 0
        if self._parts and piece.startswith(b"\n") and self._parts[-1].endswith(b"\n"):
            # The blank line ending the event was split between two reads.
            self._emit(found, b"".join(self._parts)[:-1])
            start = 1
        while True:
            end = piece.find(b"\n\n", start)
            if end < 0:
                break
            if self._parts:
                self._emit(found, b"".join((*self._parts, piece[start:end])))
            else:
                # The usual event, whole in this read: what `_emit` does, without its two calls.
                event = piece[start:end]
                if event.startswith(b"data: ") and event.find(b"\n") < 0:
                    found.append(event[6:])
                elif (data := _event_data(event)) is not None:
                    found.append(data)
            start = end + 2
        rest = piece[start:] if start else piece
        if rest:
            self._parts.append(rest)
            self._size += len(rest)
            if self._size > self._max:
                self.overflowed = True
                self._parts, self._size = [], 0
        return found

    def close(self) -> list[bytes]:
        """The data of a last event the body ended without closing."""
        rest = b"".join(self._parts)
        self._parts, self._size = [], 0
        data = _event_data(rest.rstrip(b"\n")) if rest.strip() else None
        return [data] if data is not None else []

    def _emit(self, found: list[bytes], event: bytes) -> None:
        self._parts, self._size = [], 0
        data = _event_data(event)
        if data is not None:
            found.append(data)


def _event_data(event: bytes) -> bytes | None:
    if event.startswith(b"data: ") and event.find(b"\n") < 0:
        return event[6:]  # the usual case: one data line
    lines = event.split(b"\n")
    data = [line[6:] if line.startswith(b"data: ") else line[5:] for line in lines if line.startswith(b"data:")]
    if b"event: error" in lines or b"event:error" in lines:
        return _error_data(b"\n".join(data))
    if not data:
        # Older llama.cpp servers write a failure as an `error:` field, no data (`error: {json}`):
        # looked for only here, in an event without data, so no ordinary event pays for it.
        errors = [line[7:] if line.startswith(b"error: ") else line[6:] for line in lines if line.startswith(b"error:")]
        return _error_data(b"\n".join(errors)) if errors else None
    return b"\n".join(data)


def _error_data(data: bytes) -> bytes:
    """The data of an SSE event named `error`, made an error parse_full recognises, whatever it held.

    Providers send a JSON error object (then kept), an object of their own (`{"message": ...}`),
    plain text, or nothing; relayed as chunks, these would reach the client as if content.
    """
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        body = data.decode("utf-8", "replace")
    if isinstance(body, dict) and parse_full(data).error is not None:
        return data
    return orjson.dumps({"error": body if body and isinstance(body, dict | str) else {}})


# A plain content delta as OpenAI and the simulators write it, compact: fields, then one choice
# with only content and null logprobs and finish reason (and a null usage, when asked for).
_DELTA_HEAD = b'"choices":[{"index":0,"delta":{"content":'
_DELTA_TAIL = b'},"logprobs":null,"finish_reason":null}]}'
_DELTA_TAIL_USAGE = b'},"logprobs":null,"finish_reason":null}],"usage":null}'


def _plain_delta(raw: bytes) -> Chunk | None:
    """The chunk of a plain content delta, read from its fixed parts; None: anything else.

    Gives the same Chunk as the full parse of the same bytes (tests/test_chunks.py checks it over
    many shapes): the choice's fields the relay reads are in the fixed parts; the content string
    is parsed by orjson, and so are the fields before `"choices"` (once per stream: see
    _plain_fields), so a malformed chunk is still refused.
    """
    if raw.endswith(_DELTA_TAIL_USAGE):
        end = len(raw) - len(_DELTA_TAIL_USAGE)
    elif raw.endswith(_DELTA_TAIL):
        end = len(raw) - len(_DELTA_TAIL)
    else:
        return None
    start = raw.find(_DELTA_HEAD)
    if start < 1 or not _plain_fields(raw[:start]):
        return None
    try:
        text = orjson.loads(raw[start + len(_DELTA_HEAD) : end])
    except orjson.JSONDecodeError:
        return None
    if type(text) is not str:
        return None
    if not text:
        return Chunk(raw, None, False, None, None, None, False, (), 1)
    return Chunk(raw, text, True, None, None, None, False, (), 1)


# A pure function of its bytes, remembered: a stream's chunks share these fields (id, model,
# created, ...), so each stream's are parsed once, not per event. Bounded: ~300 bytes an entry.
@functools.lru_cache(maxsize=2048)
def _plain_fields(head: bytes) -> bool:
    """Whether `head` (`{` and the fields before `"choices"`) is well-formed and holds no error or usage."""
    if head == b"{":
        return True
    if not head.endswith(b","):
        return False
    try:
        fields = orjson.loads(head[:-1] + b"}")
    except orjson.JSONDecodeError:
        return False
    # The full parse reads `error` and `usage` wherever they are; with either here, let it.
    return isinstance(fields, dict) and "error" not in fields and "usage" not in fields


# The other events of a stream with a token as OpenAI and the simulators write them: the opening
# role and the empty delta that carries the finish reason (see _fixed_delta). The usage chunk takes
# the full parse: reading its object alone measured slower.
_CHOICE_HEAD = b'"choices":[{"index":0,"delta":'
_CHOICE_END = b',"logprobs":null,"finish_reason":'
# A delta without a token: what the full parse gives for each is no content, no delta of any kind.
_FIXED_DELTAS = frozenset(
    (b"{}", b'{"role":"assistant","content":"","refusal":null}', b'{"role":"assistant","content":""}')
)
# What may follow the finish reason's name, and the reason it names.
_REASONS = ("stop", "length", "tool_calls", "content_filter")
_FIXED_ENDS: dict[bytes, str | None] = {
    b"null}]}": None,
    b'null}],"usage":null}': None,
    **{b'"%s"}]}' % reason.encode(): reason for reason in _REASONS},
    **{b'"%s"}],"usage":null}' % reason.encode(): reason for reason in _REASONS},
}
_NOT_FIXED = "not fixed"
# How every one of those ends (the choices' list closed, then the object, maybe after a null usage).
_FIXED_CLOSES = (b"}]}", b'}],"usage":null}')


def _fixed_delta(raw: bytes) -> Chunk | None:
    """The chunk of a role or finish event (one choice, a delta without a token), read from its fixed parts.

    Gives the same Chunk as the full parse (tests/test_chunks_fixed.py checks it over many shapes);
    None: anything else. The fields before `"choices"` are parsed by orjson, once per stream
    (_plain_fields), so a malformed chunk is still refused.
    """
    if not raw.endswith(_FIXED_CLOSES):
        return None  # a usage chunk's end, say: not searched
    start = raw.find(_CHOICE_HEAD)
    end = raw.rfind(_CHOICE_END)
    if start < 1 or end < 0:
        return None
    reason = _FIXED_ENDS.get(raw[end + len(_CHOICE_END) :], _NOT_FIXED)
    if reason is _NOT_FIXED or raw[start + len(_CHOICE_HEAD) : end] not in _FIXED_DELTAS:
        return None
    if not _plain_fields(raw[:start]):
        return None
    if reason is None:
        return Chunk(raw, None, False, None, None, None, False, (), 1)
    return Chunk(raw, None, False, reason, None, None, False, (0,), 1)


def parse_chunk(raw: bytes) -> Chunk:
    """Interpret one event's data; raise MalformedChunk when it is not a JSON object."""
    if raw == DONE:
        return Chunk(raw, done=True)
    chunk = _plain_delta(raw)
    if chunk is not None:
        return chunk  # most of a stream's events: no dict built, no lookups
    chunk = _fixed_delta(raw)
    if chunk is not None:
        return chunk  # a stream's opening and finish events: no dict built
    return parse_full(raw)


def parse_full(raw: bytes) -> Chunk:
    """Interpret one event's data with the JSON parser (any shape); raise MalformedChunk when not an object.

    An upstream's error, in any of the forms providers send, sets `error` (and nothing else):
    OpenAI's `{"error": {...}}`, a text (`{"error": "..."}`, then its message), any other truthy
    `error` (as the OpenAI SDKs read it), and vLLM's `{"object": "error", "message": ...}` without
    choices. (An SSE event named `error` comes here as one of these: see _error_data.)
    """
    if raw == DONE:
        return Chunk(raw, done=True)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedChunk(str(exc)) from None
    if not isinstance(body, dict):
        raise MalformedChunk("chunk is not a JSON object")
    # Runs for every chunk: locals first, one Chunk built at the end (measured ~2x faster).
    error = body.get("error")
    if error is not None and (error or type(error) is dict):
        return Chunk(raw, error=_error_fields(error))
    usage = body.get("usage")
    if usage is not None and not isinstance(usage, dict):
        usage = None
    choices = body.get("choices")
    if not choices or not isinstance(choices, list):
        if choices and not isinstance(choices, list):
            raise MalformedChunk("choices is not a list")
        if body.get("object") == "error":
            return Chunk(raw, error=body)  # vLLM's error: its fields at the top level, no `error` key
        return Chunk(raw, usage=usage)
    if len(choices) == 1:
        # The usual chunk: one choice (n = 1), read without the loop's bookkeeping.
        content, has_delta, other_delta, finish_reason, index = _read_choice(choices[0])
        ends: tuple[int, ...] = (index,) if finish_reason is not None else ()
        return Chunk(raw, content, has_delta, finish_reason, usage, None, False, ends, index + 1, other_delta)
    content = None
    has_delta = other_delta = False
    finish_reason = None
    finished: tuple[int, ...] = ()
    seen = 0
    for choice in choices:
        text, delta_seen, other_seen, reason, index = _read_choice(choice)
        seen = max(seen, index + 1)
        if text is not None:
            content = text if content is None else content + text
        has_delta = has_delta or delta_seen
        other_delta = other_delta or other_seen
        if reason is not None:
            finish_reason = reason
            finished += (index,)
    return Chunk(raw, content, has_delta, finish_reason, usage, None, False, finished, seen, other_delta)


def _error_fields(error: object) -> dict[str, Any]:
    """An `error` field as an object: OpenAI's as it is, a provider's text as its message.

    Any other truthy value counts as an error too, as the OpenAI SDKs count it (`data.get("error")`).
    """
    if type(error) is dict:
        return error
    if isinstance(error, str):
        return {"message": error}
    return {}


def _read_choice(choice: object) -> tuple[str | None, bool, bool, str | None, int]:
    """One choice's text, `has_delta`, `other_delta` (see Chunk), finish reason and index.

    Raises MalformedChunk for a choice an OpenAI SDK cannot read (`chunk.choices[0].delta.content`
    as a string): relayed as it came, it crashed the client's loop, so it is dropped and counted.
    """
    if not isinstance(choice, dict):
        raise MalformedChunk("a choice is not a JSON object")
    index = choice.get("index", 0)
    if not isinstance(index, int) or index < 0:
        index = 0
    content: str | None = None
    has_delta = other_delta = False
    delta = choice.get("delta")
    if delta is not None and not isinstance(delta, dict):
        raise MalformedChunk("a choice's delta is not a JSON object")
    reason = choice.get("finish_reason")
    if reason is not None and not isinstance(reason, str):
        raise MalformedChunk("a choice's finish_reason is not a string")
    if delta:
        text = delta.get("content")
        if text is not None and not isinstance(text, str | list):  # a list: content parts (Mistral's)
            raise MalformedChunk("a delta's content is neither a string nor a list of parts")
        calls = delta.get("tool_calls")
        if calls is not None and not isinstance(calls, list):
            raise MalformedChunk("a delta's tool_calls is not a list")
        if text and isinstance(text, str):
            content = text
            has_delta = True
        elif calls or delta.get("refusal") or delta.get("function_call"):
            has_delta = True
        else:
            # Whatever else a provider streams (reasoning, audio) is a token too: held back until
            # the content, it reached the client all at once, and a model reasoning for longer
            # than first_token_timeout was ended while it streamed. Only a role (or empty
            # values, as in OpenAI's opening `"content":"","refusal":null`) is none.
            for name, value in delta.items():
                if value and name != "role":
                    other_delta = True
                    break
    return content, has_delta, other_delta, reason, index
