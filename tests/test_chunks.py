"""Splitting an upstream SSE body into event data, whatever the reads and line endings, and parsing each event."""

from __future__ import annotations

import random

import pytest

from server.chunks import Chunk, EventSplitter, MalformedChunk, _plain_delta, parse_chunk, parse_full
from server.simulator.wire import StreamFrames

BODY = b"data: one\n\n: comment\n\nevent: x\nid: 7\ndata: two\n\ndata: a\ndata: b\n\ndata: [DONE]\n\n"
EXPECTED = [b"one", b"two", b"a\nb", b"[DONE]"]


def split_in_reads(body: bytes, size: int) -> list[bytes]:
    splitter = EventSplitter()
    found: list[bytes] = []
    for start in range(0, len(body), size):
        found += splitter.feed(body[start : start + size])
    return found + splitter.close()


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_events_are_found_whatever_the_read_sizes(size: int) -> None:
    assert split_in_reads(BODY, size) == EXPECTED


@pytest.mark.parametrize("ending", [b"\r\n", b"\r"])
@pytest.mark.parametrize("size", [1, 2, 5, 1000])
def test_crlf_and_cr_line_endings_work_even_split_across_reads(ending: bytes, size: int) -> None:
    assert split_in_reads(BODY.replace(b"\n", ending), size) == EXPECTED


def test_an_event_the_body_did_not_close_still_counts() -> None:
    assert split_in_reads(b"data: one\n\ndata: last", 1000) == [b"one", b"last"]


def test_data_without_a_space_after_the_colon_is_kept_whole() -> None:
    assert split_in_reads(b"data:x\n\n", 1000) == [b"x"]


def test_parse_chunk_reads_content_finish_reason_and_usage() -> None:
    chunk = parse_chunk(b'{"choices":[{"delta":{"content":"hi"},"finish_reason":"stop"}],"usage":{"total_tokens":3}}')
    assert (chunk.content, chunk.finish_reason, chunk.usage, chunk.has_delta) == (
        "hi",
        "stop",
        {"total_tokens": 3},
        True,
    )


def test_tool_call_deltas_count_as_relayed_tokens() -> None:
    chunk = parse_chunk(b'{"choices":[{"delta":{"tool_calls":[{"index":0}]},"finish_reason":null}]}')
    assert chunk.has_delta
    assert chunk.content is None


@pytest.mark.parametrize("raw", [b'{"id": oops', b"[1, 2]", b'"text"'])
def test_parse_chunk_rejects_what_is_not_a_json_object(raw: bytes) -> None:
    with pytest.raises(MalformedChunk):
        parse_chunk(raw)


# A plain content delta's parts, and variants of each that must take the full parse.
FIELDS = [
    b'"id":"chatcmpl-1"',
    b'"object":"chat.completion.chunk"',
    b'"created":1733000000',
    b'"model":"gpt-4o"',
    b'"system_fingerprint":"fp_sim"',
    b'"service_tier":null',
    b'"obfuscation":"a\\"b"',
    b'"model":"mod\xc3\xa8le"',
    b'"created":1.5e3',
    b'"created":123456789012345678901234567890',
    b'"x":true',
    b'"x":[1,{"y":2}]',
    b'"error":{"message":"boom","code":"c"}',
    b'"error":"not an object"',
    b'"usage":{"total_tokens":3}',
    b'"usage":7',
    b'"choices":null',
    b'"id": oops',
    b'"id":"\xff"',
    b'"id":"a\x01b"',
    b'"id" : "spaced"',
]
CHOICES = [
    b'"choices":[{"index":0,"delta":{"content":',
    b'"choices":[{"index":1,"delta":{"content":',
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":',
    b'"choices": [{"index":0,"delta":{"content":',
]
CONTENTS = [
    b'"hi"',
    b'""',
    b'" world"',
    b'"\\u00e9\\n\\"q\\"\\\\"',
    b'"caf\xc3\xa9 \xf0\x9f\x98\x80"',
    b'"\\ud83d\\ude00"',
    b'"\\ud800"',
    b'"a\x01"',
    b'"\xff"',
    b'"unterminated',
    b'"a"},"x":{"content":"b"',
    b"null",
    b"42",
    b'"}]}"',
]
TAILS = [
    b'},"logprobs":null,"finish_reason":null}]}',
    b'},"logprobs":null,"finish_reason":null}],"usage":null}',
    b'},"logprobs":null,"finish_reason":"stop"}]}',
    b'},"logprobs":{"content":[]},"finish_reason":null}]}',
    b'},"logprobs":null,"finish_reason":null}],"usage":{"total_tokens":3}}',
    b'},"logprobs":null,"finish_reason":null}]} ',
    b'},"logprobs":null,"finish_reason":null}],"usage":null}}',
    b'},"logprobs":null,"finish_reason":null},{"index":1,"delta":{"content":"x"},"finish_reason":null}]}',
]


def parsed(raw: bytes) -> Chunk | str:
    """What parsing `raw` gives: a Chunk, or the malformed error's text."""
    try:
        return parse_chunk(raw)
    except MalformedChunk as exc:
        return f"malformed: {exc}"


def parsed_in_full(raw: bytes) -> Chunk | str:
    try:
        return parse_full(raw)
    except MalformedChunk as exc:
        return f"malformed: {exc}"


def chunk_shapes(count: int) -> list[bytes]:
    """`count` chunks built from the parts above, seeded: plain deltas, and near misses of every kind."""
    rng = random.Random(14)
    shapes = []
    for _ in range(count):
        fields = rng.sample(FIELDS[:5], rng.randint(0, 5))
        if rng.random() < 0.5:
            fields.insert(rng.randint(0, len(fields)), rng.choice(FIELDS))
        middle = CHOICES[0] if rng.random() < 0.7 else rng.choice(CHOICES)
        content = rng.choice(CONTENTS[:5]) if rng.random() < 0.6 else rng.choice(CONTENTS)
        tail = rng.choice(TAILS[:2]) if rng.random() < 0.6 else rng.choice(TAILS)
        shapes.append(b"{" + b"".join(f + b"," for f in fields) + middle + content + tail)
    return shapes


def test_a_plain_content_delta_read_from_its_bytes_is_the_chunk_the_full_parse_gives() -> None:
    """Over thousands of chunk shapes (plain deltas and near misses), the fast path changes no result.

    Catches: a fast path that misreads a shape (server/chunks.py, `_plain_delta`, `_plain_fields`).
    """
    shapes = chunk_shapes(4000)
    fast = 0
    for raw in shapes:
        assert parsed(raw) == parsed_in_full(raw), raw
        fast += _plain_delta(raw) is not None
    assert 1000 < fast < len(shapes)  # both paths ran, many times each


@pytest.mark.parametrize("include_usage", [False, True])
def test_the_simulators_content_deltas_skip_the_json_parser(include_usage: bool) -> None:
    """Each content event of a stream as OpenAI writes it is read without the full parse; role and finish are not."""
    frames = StreamFrames("chatcmpl-abc", 1_733_000_000, "gpt-4o-mini", include_usage)
    content = frames.content(b'" hello"')[len(b"data: ") : -2]
    assert _plain_delta(content) == parse_full(content)
    assert _plain_delta(frames.role()[len(b"data: ") : -2]) is None
    assert _plain_delta(frames.finish("stop")[len(b"data: ") : -2]) is None


# An upstream's error inside a stream, as OpenAI-compatible providers send it: each must be an error.
ERROR_FORMS = {
    "openai": b'{"error":{"message":"upstream says no","type":"server_error","code":"overloaded"}}',
    "message_only": b'{"error":{"message":"upstream says no"}}',
    "text": b'{"error":"upstream says no"}',
    "vllm": b'{"object":"error","message":"upstream says no","type":"InternalServerError","param":null,"code":500}',
}


@pytest.mark.parametrize("raw", ERROR_FORMS.values(), ids=list(ERROR_FORMS))
def test_an_error_in_each_providers_form_is_an_error_with_its_message_and_nothing_else(raw: bytes) -> None:
    chunk = parse_chunk(raw)
    assert chunk.error is not None
    assert chunk.error["message"] == "upstream says no"
    assert (chunk.content, chunk.has_delta, chunk.finish_reason, chunk.usage) == (None, False, None, None)


def test_an_error_field_of_another_truthy_kind_is_an_error_as_the_openai_sdk_reads_it() -> None:
    assert parse_chunk(b'{"error":true}').error == {}


# What providers put in the data of an SSE event named `error`.
NAMED_ERROR_DATA = {
    "own_object": b'data: {"message":"upstream says no","type":"server_error"}',
    "openai_object": b'data: {"error":{"message":"upstream says no"}}',
    "error_text": b'data: {"error":"upstream says no"}',
    "plain_text": b"data: upstream says no",
    "json_text": b'data: "upstream says no"',
}


@pytest.mark.parametrize("data", NAMED_ERROR_DATA.values(), ids=list(NAMED_ERROR_DATA))
@pytest.mark.parametrize("name", [b"event: error", b"event:error"], ids=["spaced", "unspaced"])
@pytest.mark.parametrize("size", [1, 1000], ids=["bytewise", "whole"])
def test_an_event_named_error_is_an_error_with_its_message_whatever_its_data(
    data: bytes, name: bytes, size: int
) -> None:
    raws = split_in_reads(b"data: one\n\n" + name + b"\n" + data + b"\n\ndata: two\n\n", size)
    first, error, last = raws
    assert (first, last) == (b"one", b"two")
    assert (parse_chunk(error).error or {}).get("message") == "upstream says no"


@pytest.mark.parametrize("data", [b"", b"data: [1, 2]", b"data: {}"], ids=["no_data", "a_list", "an_empty_object"])
def test_an_event_named_error_without_a_message_is_still_an_error(data: bytes) -> None:
    (raw,) = split_in_reads(b"event: error\n" + data + b"\n\n", 1000)
    assert parse_chunk(raw).error == {}


# Fields beside the choices that leave a chunk what it is.
BESIDE_CHOICES = {
    "error_null": b'"error":null',
    "error_false": b'"error":false',
    "error_empty": b'"error":""',
    "object_error": b'"object":"error"',
    "unknown_fields": b'"warning":{"message":"m"},"x":1',
}


@pytest.mark.parametrize("extra", BESIDE_CHOICES.values(), ids=list(BESIDE_CHOICES))
def test_a_chunk_with_choices_and_other_fields_is_content_not_an_error(extra: bytes) -> None:
    chunk = parse_chunk(b"{" + extra + b',"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}')
    assert (chunk.error, chunk.content) == (None, "hi")


def test_a_usage_chunk_without_choices_is_not_an_error() -> None:
    chunk = parse_chunk(b'{"object":"chat.completion.chunk","choices":[],"usage":{"total_tokens":3}}')
    assert (chunk.error, chunk.usage) == (None, {"total_tokens": 3})


def _delta(delta: bytes, index: int = 0) -> bytes:
    return b'{"choices":[{"index":%d,"delta":%s,"finish_reason":null}]}' % (index, delta)


# Deltas that carry no text of the answer but something all the same, as providers stream them.
OTHER_DELTAS = {
    "reasoning_content": _delta(b'{"reasoning_content":"Let me think."}'),  # vLLM, DeepSeek
    "reasoning": _delta(b'{"role":"assistant","content":"","reasoning":"Let me think."}'),  # OpenRouter, Ollama
    "audio": _delta(b'{"audio":{"id":"audio_1","data":"AAAA","transcript":"Hi"}}'),  # gpt-4o-audio
    "content_parts": _delta(b'{"content":[{"type":"text","text":"Hi"}]}'),  # content that is not a string
    "second_choice": b'{"choices":[{"index":0,"delta":{},"finish_reason":null},'
    b'{"index":1,"delta":{"reasoning_content":"Hm."},"finish_reason":null}]}',
}


@pytest.mark.parametrize("raw", OTHER_DELTAS.values(), ids=list(OTHER_DELTAS))
def test_a_delta_of_reasoning_or_audio_is_a_token_without_text(raw: bytes) -> None:
    """Catches: `_read_choice` (server/chunks.py) taking only content, tool calls and refusals for a token."""
    chunk = parse_chunk(raw)
    assert (chunk.other_delta, chunk.has_delta, chunk.content) == (True, False, None)


NO_TOKEN_DELTAS = {
    "role": _delta(b'{"role":"assistant"}'),
    "openai_opening": _delta(b'{"role":"assistant","content":"","refusal":null}'),
    "empty_values": _delta(b'{"role":"assistant","content":null,"reasoning_content":"","tool_calls":[]}'),
    "empty": _delta(b"{}"),
    "none": b'{"choices":[{"index":0,"finish_reason":null}]}',
}


@pytest.mark.parametrize("raw", NO_TOKEN_DELTAS.values(), ids=list(NO_TOKEN_DELTAS))
def test_a_delta_with_only_its_role_or_empty_values_is_no_token(raw: bytes) -> None:
    chunk = parse_chunk(raw)
    assert (chunk.other_delta, chunk.has_delta) == (False, False)


def test_a_content_delta_is_of_the_answer_not_other() -> None:
    """Content keeps its meaning for what reads `has_delta` alone (a continuation's prefill)."""
    chunk = parse_chunk(_delta(b'{"content":"Hi","reasoning_content":"Hm."}'))
    assert (chunk.has_delta, chunk.other_delta, chunk.content) == (True, False, "Hi")


@pytest.mark.parametrize("spacing", [b"error: ", b"error:"], ids=["spaced", "unspaced"])
def test_an_event_of_an_error_field_alone_is_an_error_with_its_message(spacing: bytes) -> None:
    # Older llama.cpp servers write a failure so, with no data line.
    body = b": ping\n\n" + spacing + b'{"code":500,"message":"KV cache is full","type":"server_error"}\n\n'

    [data] = split_in_reads(body, 1000)

    assert parse_chunk(data).error == {"code": 500, "message": "KV cache is full", "type": "server_error"}


def test_an_error_field_beside_data_leaves_the_data_as_it_is() -> None:
    assert split_in_reads(b'error: {"message":"no"}\ndata: {"choices":[]}\n\n', 1000) == [b'{"choices":[]}']


# CR-only line endings (the SSE spec allows `\r`, `\r\n` and `\n`): a `\r` ends its line when it
# arrives, and a `\n` opening the next read is the rest of a `\r\n`. Each test below says which
# feed call an event comes out of, since a paced upstream holds the connection open after it.


def feeds(reads: list[bytes]) -> list[list[bytes]]:
    """What each feed call returns, in order, on one splitter."""
    splitter = EventSplitter()
    return [splitter.feed(read) for read in reads]


def test_an_event_ending_in_cr_cr_comes_out_of_the_read_that_ends_it() -> None:
    """A paced upstream with CR-only endings: each event, `[DONE]` too, leaves with its own read, not the next."""
    assert feeds([b"data: one\r\r", b"data: two\r\r", b"data: [DONE]\r\r"]) == [[b"one"], [b"two"], [b"[DONE]"]]


def test_a_cr_blank_line_alone_in_a_read_ends_the_event_at_that_read() -> None:
    assert feeds([b"data: one\r", b"\r"]) == [[], [b"one"]]


def test_a_crlf_split_inside_an_event_is_one_line_end_not_a_blank_line() -> None:
    """`\\r` | `\\n` between two data lines: one event of both, not two events."""
    assert feeds([b"data: a\r", b"\ndata: b\r\n\r\n"]) == [[], [b"a\nb"]]


def test_a_crlf_blank_line_split_after_its_cr_comes_out_at_the_cr_and_once() -> None:
    """The event is complete at the `\\r`; the `\\n` after it adds nothing, and the next event is whole."""
    assert feeds([b"data: a\r\n\r", b"\n", b"data: b\r\n\r\n"]) == [[b"a"], [], [b"b"]]


def test_a_cr_then_a_read_of_lf_lf_is_a_line_end_and_a_blank_line() -> None:
    """`\\r` | `\\n\\n`: the first `\\n` completes the `\\r\\n`, the second is the blank line."""
    assert feeds([b"data: a\r", b"\n\n"]) == [[], [b"a"]]


def test_only_one_lf_after_a_cr_is_dropped_even_in_a_read_of_its_own() -> None:
    """`\\r` | `\\n` | `\\n`: the third read's `\\n` is a blank line of its own."""
    assert feeds([b"data: a\r", b"\n", b"\n"]) == [[], [], [b"a"]]


def test_an_empty_read_between_a_cr_and_its_lf_leaves_them_one_line_end() -> None:
    assert feeds([b"data: a\r", b"", b"\ndata: b\r\r"]) == [[], [], [b"a\nb"]]


def test_a_read_after_a_cr_ended_event_loses_no_byte_when_it_opens_without_lf() -> None:
    """Only a `\\n` is dropped after a `\\r`: the paced event after it comes out whole, the fast path after that."""
    assert feeds([b"data: a\r\r", b"data: b\n\n", b"\n", b"data: c\n\n"]) == [[b"a"], [b"b"], [], [b"c"]]


def _reference_reads(reads: list[bytes]) -> list[list[bytes]]:
    """A byte-at-a-time SSE parser (the WHATWG algorithm, data fields only): the events each read completes.

    A last event the body did not close counts at close, as EventSplitter.close counts it.
    """
    out: list[list[bytes]] = []
    line = bytearray()
    data: list[bytes] = []
    after_cr = False

    def end_line(found: list[bytes]) -> None:
        if not line:
            if data:
                found.append(b"\n".join(data))
            data.clear()
        elif line.startswith(b"data:"):
            value = bytes(line[5:])
            data.append(value[1:] if value.startswith(b" ") else value)
        line.clear()

    for read in reads:
        found: list[bytes] = []
        for byte in read:
            if after_cr and byte == 0x0A:
                after_cr = False
                continue
            after_cr = byte == 0x0D
            if byte in (0x0A, 0x0D):
                end_line(found)
            else:
                line.append(byte)
        out.append(found)
    last: list[bytes] = []
    if line:
        end_line(last)
    end_line(last)
    out.append(last)
    return out


def _mixed_bodies() -> list[bytes]:
    """Bodies of one shape whose every line ending is `\\n`, `\\r\\n` or `\\r`, uniform and mixed (seeded)."""
    # The last event is left for close(), its line ended (or not) as the others.
    lines = [b"data: one", b"", b": c", b"", b"data: two", b"data: 2b", b"", b"", b"data:three", b"", b"data: last"]
    endings = [b"\n", b"\r\n", b"\r"]
    rng = random.Random(7)
    choices = [[e] * len(lines) for e in endings] + [
        [*(rng.choice(endings) for _ in lines[1:]), rng.choice([*endings, b""])] for _ in range(30)
    ]
    return [b"".join(line + ending for line, ending in zip(lines, chosen, strict=True)) for chosen in choices]


MIXED_BODIES = _mixed_bodies()


@pytest.mark.parametrize(
    "body", MIXED_BODIES, ids=["lf", "crlf", "cr", *(f"mixed{n}" for n in range(len(MIXED_BODIES) - 3))]
)
def test_every_split_in_two_or_three_reads_gives_each_event_from_the_read_that_completes_it(body: bytes) -> None:
    """Against a byte-at-a-time reference: same events, each from the same feed call (or close), for every cut."""
    cuts = [(i, j) for i in range(len(body) + 1) for j in range(i, len(body) + 1)]
    for i, j in cuts:
        reads = [body[:i], body[i:j], body[j:]]
        splitter = EventSplitter()
        got = [splitter.feed(read) for read in reads] + [splitter.close()]
        assert got == _reference_reads(reads), reads
