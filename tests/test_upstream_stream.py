"""UpstreamStream hands the relay its first token before it parses the rest of that read, and fails
its prime on an upstream error before it, in whatever form the upstream sent it."""

from __future__ import annotations

import json
from typing import cast

import pytest

from server.errors import UpstreamError
from server.upstreams.failures import MESSAGE_LIMIT
from server.upstreams.push import Body
from server.upstreams.stream import UpstreamStream


class _Body:
    """The part of the connection's body the pulling stream reads: `read()`, then `b""` at the end."""

    def __init__(self, pieces: list[bytes]) -> None:
        self._pieces = pieces

    async def read(self) -> bytes:
        return self._pieces.pop(0) if self._pieces else b""

    @property
    def at_eof(self) -> bool:
        return not self._pieces


class _Response:
    def __init__(self, pieces: list[bytes]) -> None:
        self.body = cast(Body, _Body(pieces))

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


def _event(body: str) -> bytes:
    return f"data: {body}\n\n".encode()


ROLE = _event('{"choices":[{"index":0,"delta":{"role":"assistant"}}]}')


def _token(text: str) -> bytes:
    return _event(json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]}))


FINISH = _event('{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}')


async def test_the_first_token_of_a_burst_is_a_batch_of_its_own() -> None:
    burst = ROLE + _token("a") + _token("b") + _token("c") + FINISH + b"data: [DONE]\n\n"
    stream = UpstreamStream(_Response([burst]), "test")

    batches = [[chunk.content for chunk in batch] async for batch in stream]

    assert batches == [[None, "a"], ["b", "c", None]]
    assert stream.finished


# An upstream's error inside a stream, as OpenAI-compatible providers send it.
ERROR_EVENTS = {
    "openai": _event('{"error":{"message":"upstream says no","type":"server_error","code":"overloaded"}}'),
    "message_only": _event('{"error":{"message":"upstream says no"}}'),
    "text": _event('{"error":"upstream says no"}'),
    "named": b'event: error\ndata: {"message":"upstream says no","type":"server_error"}\n\n',
    "vllm": _event('{"object":"error","message":"upstream says no","type":"InternalServerError","code":500}'),
}


async def _prime_failure(event: bytes) -> UpstreamError:
    """What priming a stream whose upstream sends `event` after its role chunk raises."""
    stream = UpstreamStream(_Response([ROLE + event + _token("never") + FINISH]), "test")
    with pytest.raises(UpstreamError) as caught:
        await stream.prime()
    return caught.value


@pytest.mark.parametrize("event", ERROR_EVENTS.values(), ids=list(ERROR_EVENTS))
async def test_an_error_before_the_first_token_in_each_providers_form_fails_the_prime_as_an_error_event(
    event: bytes,
) -> None:
    failure = await _prime_failure(event)
    assert (failure.reason, failure.message) == ("error_event", "upstream says no")


@pytest.mark.parametrize(
    "error",
    [
        '{"error":{"message":"Incorrect API key provided: sk-test-key","code":"invalid_api_key"}}',
        '{"object":"error","message":"Incorrect API key provided: sk-test-key","code":401}',
    ],
)
async def test_an_error_event_that_refuses_the_key_hides_its_message(error: str) -> None:
    failure = await _prime_failure(_event(error))
    assert failure.code == "upstream_auth_failed"
    assert "sk-" not in failure.message


async def test_an_error_events_message_is_passed_on_bounded() -> None:
    failure = await _prime_failure(_event(json.dumps({"error": "x" * (MESSAGE_LIMIT * 5)})))
    assert failure.message == "x" * MESSAGE_LIMIT


BOM = b"\xef\xbb\xbf"


@pytest.mark.parametrize(
    "reads",
    [
        [BOM + _token("first") + _token("second") + FINISH],
        [BOM, _token("first") + _token("second") + FINISH],
        [BOM[:1], BOM[1:] + _token("first") + _token("second") + FINISH],
    ],
    ids=["with_the_events", "alone", "split"],
)
async def test_a_byte_order_mark_before_the_first_event_loses_no_event(reads: list[bytes]) -> None:
    """The SSE standard's parser drops one; kept, it made the first line `\\ufeffdata: ...`, no field at all."""
    stream = UpstreamStream(_Response(reads), "test")
    await stream.prime()

    texts = [chunk.content for batch in [batch async for batch in stream] for chunk in batch]

    assert texts == ["first", "second", None]


async def test_a_json_error_after_a_byte_order_mark_fails_the_prime_with_its_message() -> None:
    stream = UpstreamStream(_Response([BOM, b'{"error": {"message": "upstream says no"}}']), "test")

    with pytest.raises(UpstreamError) as caught:
        await stream.prime()
    assert caught.value.message == "upstream says no"


@pytest.mark.parametrize("ending", [b"\n\n", b""], ids=["closed", "cut_by_the_body_end"])
async def test_an_older_llamacpp_servers_error_line_fails_the_prime_with_its_message(ending: bytes) -> None:
    line = b'error: {"code":500,"message":"llama_decode failed: KV cache is full","type":"server_error"}'

    stream = UpstreamStream(_Response([ROLE + line + ending]), "test")

    with pytest.raises(UpstreamError) as caught:
        await stream.prime()
    assert (caught.value.reason, caught.value.message) == ("error_event", "llama_decode failed: KV cache is full")
