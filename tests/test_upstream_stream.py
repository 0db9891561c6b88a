"""UpstreamStream hands the relay its first token before it parses the rest of that read."""

from __future__ import annotations

import json
from typing import cast

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
