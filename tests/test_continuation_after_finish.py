"""A stream part that fails after its finish reason is never continued (upstreams/continuation.py), against fakes.

UpstreamStream ends a part cut after its finish as whole (tests/test_stream_finished_cut.py, with
real processes); any other source's failure there is passed on as it came, but never continued:
the answer was whole, and a continuation would be a second, paid one spliced after it.
"""

from __future__ import annotations

from typing import cast

import orjson

from server.dialects import OpenAIDialect
from server.upstreams.continuation import ContinuedStream
from server.upstreams.stream import UpstreamStream
from tests.test_continuation import ROLE, FakeStream, chunk
from tests.test_relay import RecordingSink, run_relay

USAGE = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}


async def test_a_part_that_fails_after_its_finish_is_not_continued() -> None:
    first = FakeStream(
        [
            chunk(ROLE),
            chunk({"content": "Hello"}),
            chunk({"content": " world"}),
            chunk({}, "stop"),
            chunk({}, None, USAGE),
        ],
        cut=True,
    )
    asked: list[str] = []

    async def resume(text: str) -> UpstreamStream:
        asked.append(text)
        return cast(UpstreamStream, FakeStream([chunk(ROLE), chunk({"content": "again"}), chunk({}, "stop")]))

    sink = RecordingSink()
    await run_relay(
        aiter(ContinuedStream(first, resume, lambda result: None, idle_timeout=30)), OpenAIDialect(True), sink
    )
    events = [event[len(b"data: ") :] for event in sink.text.split(b"\n\n") if event]
    reasons = [c["finish_reason"] for e in events if e.startswith(b"{") for c in orjson.loads(e).get("choices", [])]
    assert asked == []
    assert [reason for reason in reasons if reason] == ["stop"]
    assert not any(b"again" in event for event in events)
