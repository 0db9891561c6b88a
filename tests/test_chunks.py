"""Splitting an upstream SSE body into event data, whatever the reads and line endings."""

from __future__ import annotations

import pytest

from server.chunks import EventSplitter, MalformedChunk, parse_chunk

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
