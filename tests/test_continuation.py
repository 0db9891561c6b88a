"""A stream continued after a cut (upstreams/continuation.py), against fake chunk sources: what it splices."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import orjson

from server.chunks import Chunk, parse_chunk
from server.dialects import OpenAIDialect
from server.errors import UpstreamProtocolError
from server.upstreams.continuation import ContinuedStream
from server.upstreams.stream import UpstreamStream
from tests.test_relay import RecordingSink, run_relay

ROLE = {"role": "assistant", "content": ""}


def chunk(delta: dict[str, Any], finish_reason: str | None = None, usage: dict[str, int] | None = None) -> Chunk:
    body: dict[str, Any] = {"id": "c", "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
    if usage is not None:
        body["usage"] = usage
    return parse_chunk(orjson.dumps(body))


class FakeStream:
    """A source of one batch per chunk, cut (a mid-stream failure) after them when `cut`."""

    def __init__(self, chunks: list[Chunk], *, cut: bool = False) -> None:
        self.chunks = chunks
        self.cut = cut
        self.closed = False
        self.upstream = "fake"

    async def __aiter__(self) -> AsyncIterator[list[Chunk]]:
        for item in self.chunks:
            yield [item]
        if self.cut:
            raise UpstreamProtocolError("The upstream connection failed mid-stream.")

    def close(self) -> None:
        self.closed = True


def continued(first: FakeStream, then: FakeStream) -> ContinuedStream:
    async def resume(text: str) -> UpstreamStream:
        return cast(UpstreamStream, then)

    return ContinuedStream(first, resume, lambda result: None, idle_timeout=30)


async def relayed(stream: ContinuedStream) -> list[bytes]:
    """The data of each event the client gets."""
    sink = RecordingSink()
    await run_relay(aiter(stream), OpenAIDialect(include_usage=True), sink)
    return [event[len(b"data: ") :] for event in sink.text.split(b"\n\n") if event]


async def test_a_continuations_reasoning_deltas_are_relayed() -> None:
    """Only the continuation's opening role chunk is dropped: a model that reasons again when continued
    streams reasoning deltas, and they are tokens the client gets, as in the first part."""
    first = FakeStream([chunk(ROLE), chunk({"content": "Hello"})], cut=True)
    then = FakeStream(
        [
            chunk(ROLE),
            chunk({"reasoning_content": "go on"}),
            chunk({"content": " world"}),
            chunk({}, "stop"),
        ]
    )
    events = await relayed(continued(first, then))
    assert sum(b'"reasoning_content":"go on"' in event for event in events) == 1
    assert sum(b'"role":"assistant"' in event for event in events) == 1
    assert events[-1] == b"[DONE]"


async def test_a_continuation_whose_finish_chunk_carries_its_usage_ends_with_done() -> None:
    """Some upstreams send the usage on the finish chunk itself: rewritten to count both parts, it is
    still choice 0's finish, and the stream ends with [DONE], not with an error for an unfinished choice."""
    first = FakeStream([chunk(ROLE), chunk({"content": "Hello"})], cut=True)
    usage = {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}
    then = FakeStream([chunk(ROLE), chunk({"content": " world"}), chunk({}, "stop", usage)])
    events = await relayed(continued(first, then))
    assert not any(b'"error"' in event for event in events)
    assert events[-1] == b"[DONE]"
    last = orjson.loads(events[-2])
    assert last["choices"][0]["finish_reason"] == "stop"
    assert last["usage"]["completion_tokens"] == 2
    assert last["usage"]["sluice_continued"] is True


def named(name: str, delta: dict[str, Any], finish_reason: str | None = None) -> Chunk:
    """A chunk of the completion `name` answered by its own upstream (id, created, model, fingerprint)."""
    body = {
        "id": f"chatcmpl-{name}",
        "created": len(name),
        "model": f"model-{name}",
        "system_fingerprint": f"fp_{name}",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    return parse_chunk(orjson.dumps(body))


async def test_a_continued_stream_is_named_as_its_first_part_from_start_to_end() -> None:
    """One completion to the client: the continuation's own id, created, model and system_fingerprint
    (another upstream's) do not change in the middle of the stream."""
    first = FakeStream([named("a", ROLE), named("a", {"content": "Hello"})], cut=True)
    then = FakeStream([named("bb", ROLE), named("bb", {"content": " world"}), named("bb", {}, "stop")])
    events = [orjson.loads(event) for event in (await relayed(continued(first, then)))[:-1]]
    names = {(e["id"], e["created"], e["model"], e["system_fingerprint"]) for e in events}
    assert names == {("chatcmpl-a", 1, "model-a", "fp_a")}
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == "Hello world"
