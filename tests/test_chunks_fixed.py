"""The fast path for a stream's other events with a fixed delta: the opening role and the finish.

Each must give the Chunk the full parse gives, or step aside (tests/test_chunks.py does the same
for the plain content delta).
"""

from __future__ import annotations

import random

import pytest

from server.chunks import _fixed_delta, parse_full
from server.simulator.wire import StreamFrames
from tests.test_chunks import parsed, parsed_in_full

# The fields before `"choices"`: plain ones, and variants that must take the full parse.
FIELDS = [
    b'"id":"chatcmpl-1"',
    b'"object":"chat.completion.chunk"',
    b'"created":1733000000',
    b'"model":"gpt-4o"',
    b'"system_fingerprint":"fp_sim"',
    b'"object":"error"',
    b'"error":{"message":"boom"}',
    b'"error":"not an object"',
    b'"usage":{"total_tokens":3}',
    b'"choices":null',
    b'"id": oops',
    b'"id":"\xff"',
    b'"x":[1,{"y":2}]',
]
HEADS = [
    b'"choices":[{"index":0,"delta":',
    b'"choices":[{"index":1,"delta":',
    b'"choices": [{"index":0,"delta":',
]
DELTAS = [
    b"{}",
    b'{"role":"assistant","content":"","refusal":null}',
    b'{"role":"assistant","content":""}',
    b'{"role":"assistant","content":"hi"}',
    b'{"role":"assistant","content":"","refusal":"no"}',
    b'{"content":null}',
    b'{"reasoning_content":"think"}',
    b"{ }",
    b"null",
]
ENDS = [
    b',"logprobs":null,"finish_reason":null}]}',
    b',"logprobs":null,"finish_reason":null}],"usage":null}',
    b',"logprobs":null,"finish_reason":"stop"}]}',
    b',"logprobs":null,"finish_reason":"stop"}],"usage":null}',
    b',"logprobs":null,"finish_reason":"length"}]}',
    b',"logprobs":null,"finish_reason":"tool_calls"}],"usage":null}',
    b',"logprobs":null,"finish_reason":"content_filter"}]}',
    b',"logprobs":null,"finish_reason":"other"}]}',
    b',"logprobs":null,"finish_reason":7}]}',
    b',"logprobs":null,"finish_reason":"stop"}],"usage":{"total_tokens":3}}',
    b',"logprobs":null,"finish_reason":"stop"},{"index":1,"delta":{},"finish_reason":null}]}',
    b',"logprobs":null,"finish_reason":"stop"}]} ',
    b',"logprobs":null,"finish_reason":"stop"}]}}',
]


def fields(rng: random.Random) -> bytes:
    chosen = rng.sample(FIELDS[:5], rng.randint(0, 5))
    if rng.random() < 0.4:
        chosen.insert(rng.randint(0, len(chosen)), rng.choice(FIELDS))
    return b"{" + b"".join(field + b"," for field in chosen)


def choice_shapes(count: int) -> list[bytes]:
    """`count` one-choice chunks with a delta and an end each, seeded: fixed shapes and near misses."""
    rng = random.Random(14)
    return [
        fields(rng)
        + (HEADS[0] if rng.random() < 0.8 else rng.choice(HEADS))
        + (rng.choice(DELTAS[:3]) if rng.random() < 0.6 else rng.choice(DELTAS))
        + (rng.choice(ENDS[:7]) if rng.random() < 0.6 else rng.choice(ENDS))
        for _ in range(count)
    ]


def test_a_role_or_finish_event_read_from_its_fixed_parts_is_the_chunk_the_full_parse_gives() -> None:
    """Over thousands of shapes (the fixed ones and near misses), the fast path changes no result.

    Catches: a fast path that misreads a delta, a finish reason or the fields before the choices
    (server/chunks.py, `_fixed_delta`).
    """
    shapes = choice_shapes(4000)
    fast = 0
    for raw in shapes:
        assert parsed(raw) == parsed_in_full(raw), raw
        fast += _fixed_delta(raw) is not None
    assert 1000 < fast < len(shapes)  # both paths ran, many times each


@pytest.mark.parametrize("include_usage", [False, True])
def test_the_simulators_role_and_finish_events_skip_the_full_parse(include_usage: bool) -> None:
    """A stream's events as OpenAI writes them: the role and finish events are read from their fixed parts."""
    frames = StreamFrames("chatcmpl-abc", 1_733_000_000, "gpt-4o-mini", include_usage)
    for event in (frames.role(), frames.finish("stop"), frames.finish("length")):
        raw = event[len(b"data: ") : -2]
        assert _fixed_delta(raw) == parse_full(raw)
