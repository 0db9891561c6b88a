"""An upstream whose SSE lines end in a bare `\r`, paced and holding its connection open.

Through Sluice's own upstream client, against a raw loopback server in this process
(tests/support/raw_upstream.py): each event must reach the reader while the upstream still holds
the connection, not when the next event (or the idle timeout) comes.
"""

from __future__ import annotations

import asyncio

from tests.conftest import RawClient
from tests.support.raw_upstream import STREAM_HEAD, RawUpstream, chunk, token

SECONDS = 10  # a bound far from any real wait here
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def cr_only(event: bytes) -> bytes:
    """`event` with every line ended by a bare `\\r`, as the SSE spec allows."""
    return event.replace(b"\n", b"\r")


async def test_each_cr_only_event_is_read_before_the_next_one_is_sent(
    raw_upstream: RawUpstream, raw_client: RawClient
) -> None:
    """The first token opens the stream, the second comes on its own, `[DONE]` ends it: no read waits for more.

    Catches: a `\\r` ending a read held back in case a `\\n` follows (server/chunks.py, EventSplitter.feed).
    """
    opening = asyncio.ensure_future(raw_client(raw_upstream.url).open_stream(CHAT, "rid"))
    exchange = await raw_upstream.next()
    exchange.write(STREAM_HEAD + chunk(cr_only(token(1))))
    async with asyncio.timeout(SECONDS):
        stream = await opening  # primed: it read up to the first token
    batches = stream.__aiter__()
    try:
        async with asyncio.timeout(SECONDS):
            first = await anext(batches)
        exchange.write(chunk(cr_only(token(2))))
        async with asyncio.timeout(SECONDS):
            second = await anext(batches)
        exchange.write(chunk(cr_only(b"data: [DONE]\n\n")))
        async with asyncio.timeout(SECONDS):
            rest = [c for batch in [b async for b in batches] for c in batch if not c.done]
    finally:
        stream.close()

    assert [c.content for c in first] == ["t1"]
    assert [c.content for c in second] == ["t2"]
    assert rest == []
