"""UpstreamStream's prime: where the first token is, and what a JSON reply in place of events stands for."""

from __future__ import annotations

import asyncio
import json
from typing import cast

import pytest

from server.errors import UpstreamError
from server.upstreams.push import Body
from server.upstreams.stream import UpstreamStream

# Far above what a prime of bytes already received takes: only a prime that waits for more misses it.
BOUND = 10.0


class _HeldBody:
    """A body whose `pieces` arrived, and then nothing more for as long as the test runs."""

    def __init__(self, pieces: list[bytes]) -> None:
        self._pieces = pieces
        self._never = asyncio.Event()

    async def read(self) -> bytes:
        if self._pieces:
            return self._pieces.pop(0)
        await self._never.wait()
        return b""


class _EndedBody:
    """A body whose `pieces` arrived, then its end."""

    def __init__(self, pieces: list[bytes]) -> None:
        self._pieces = pieces

    async def read(self) -> bytes:
        return self._pieces.pop(0) if self._pieces else b""


class _Response:
    def __init__(self, body: _HeldBody | _EndedBody) -> None:
        self.body = cast(Body, body)

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


def _event(delta: dict[str, object]) -> bytes:
    body = {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


async def test_the_prime_ends_at_a_reasoning_delta_while_the_upstream_goes_on() -> None:
    """A reasoning model's first delta is its first token: relayed at once, and the end of the first-token wait.

    Catches: UpstreamStream.prime (server/upstreams/stream.py) reading on to the first content,
    which held the reasoning back and let first_token_timeout end a model that was streaming.
    """
    stream = UpstreamStream(
        _Response(_HeldBody([_event({"role": "assistant"}), _event({"reasoning_content": "Hm."})])), "test"
    )
    async with asyncio.timeout(BOUND):
        await stream.prime()
        batches = aiter(stream)
        primed = [await anext(batches), await anext(batches)]  # what prime read: replayed without waiting
    assert [chunk.other_delta for batch in primed for chunk in batch] == [False, True]


JSON_ERRORS = {
    "openai": {"error": {"message": "model overloaded", "type": "server_error", "code": "overloaded"}},
    "text": {"error": "model overloaded"},
    "vllm": {"object": "error", "message": "model overloaded", "type": "ServiceUnavailable", "code": 503},
}


@pytest.mark.parametrize("reply", JSON_ERRORS.values(), ids=list(JSON_ERRORS))
async def test_a_json_error_in_place_of_events_fails_the_prime_with_the_upstreams_message(
    reply: dict[str, object],
) -> None:
    """Status 200, and an error object where the events should be: that error, not "no first token".

    Catches: UpstreamStream._read_first (server/upstreams/stream.py) reading the reply as events.
    """
    data = json.dumps(reply, indent=2).encode()
    stream = UpstreamStream(_Response(_EndedBody([data[:20], data[20:]])), "test")
    with pytest.raises(UpstreamError) as failed:
        await stream.prime()
    assert failed.value.message == "model overloaded"


async def test_a_json_error_reply_is_retried_like_an_error_event() -> None:
    """OpenAI's form, with a code that names no status: retried, on this upstream or the next."""
    data = json.dumps(JSON_ERRORS["openai"]).encode()
    stream = UpstreamStream(_Response(_EndedBody([b"\n" + data])), "test")
    with pytest.raises(UpstreamError) as failed:
        await stream.prime()
    assert (failed.value.code, failed.value.reason, failed.value.status) == ("overloaded", "error_event", 502)


async def test_a_json_reply_that_is_no_error_is_a_malformed_reply_for_another_upstream() -> None:
    """A whole chat completion from an upstream that does not stream is no stream."""
    completion = {"object": "chat.completion", "choices": [{"index": 0, "message": {"content": "hi"}}]}
    stream = UpstreamStream(_Response(_EndedBody([json.dumps(completion).encode()])), "test")
    with pytest.raises(UpstreamError) as failed:
        await stream.prime()
    assert (failed.value.code, failed.value.reason) == ("upstream_malformed_reply", "malformed_reply")


async def test_an_event_stream_is_read_as_it_arrives_whatever_it_is_labelled() -> None:
    """Only the bytes decide: a stream's first read is events, handed on, not a reply held to its end."""
    stream = UpstreamStream(_Response(_HeldBody([b": hello\n\n" + _event({"content": "Hi"})])), "test")
    async with asyncio.timeout(BOUND):
        await stream.prime()
        first = await anext(aiter(stream))
    assert [chunk.content for chunk in first] == ["Hi"]
