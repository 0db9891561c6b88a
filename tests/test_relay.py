"""The relay against a fake chunk source (or an upstream stream on a fake body) and a fake sink: how streams end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import aiohttp
import orjson
import pytest

from server.access import RequestRecord
from server.chunks import Chunk, parse_chunk
from server.dialects import NativeDialect, OpenAIDialect
from server.guard import Deadlines, Outcome, StreamGuard
from server.relay import _NoGaps, relay
from server.relay_events import RelayEvents
from server.upstreams.stream import UpstreamStream

GENEROUS = Deadlines(first_token=30, idle=30, total=60, send=30)


def content_chunk(text: str) -> Chunk:
    raw = orjson.dumps({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})
    return parse_chunk(raw)


def finish_chunk(reason: str = "stop") -> Chunk:
    return parse_chunk(orjson.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}))


def usage_chunk() -> Chunk:
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    return parse_chunk(orjson.dumps({"choices": [], "usage": usage}))


async def from_list(chunks: list[Chunk], then: asyncio.Event | None = None) -> AsyncIterator[list[Chunk]]:
    """One batch per chunk, as when each arrives in its own network read."""
    for chunk in chunks:
        yield [chunk]
    if then is not None:
        await then.wait()


class RecordingSink:
    """Collects writes; can block a write until released, to stand for a client that stopped reading."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.blocked = asyncio.Event()
        self.release = asyncio.Event()
        self.release.set()
        self._wrote = asyncio.Condition()

    async def write(self, data: bytes) -> None:
        if not self.release.is_set():
            self.blocked.set()
            await self.release.wait()
        self.writes.append(data)
        async with self._wrote:
            self._wrote.notify_all()

    async def wait_for_writes(self, count: int) -> None:
        async with self._wrote:
            await self._wrote.wait_for(lambda: len(self.writes) >= count)

    @property
    def text(self) -> bytes:
        return b"".join(self.writes)


def new_record() -> RequestRecord:
    return RequestRecord(started=asyncio.get_running_loop().time(), stream=True)


async def run_relay(
    chunks: AsyncIterator[list[Chunk]],
    dialect: object,
    sink: RecordingSink,
    deadlines: Deadlines = GENEROUS,
    choices: int = 1,
) -> RequestRecord:
    record = new_record()
    guard = StreamGuard(deadlines)
    try:
        await relay(chunks, dialect, sink, guard, record, final_write_timeout=1, choices=choices)  # type: ignore[arg-type]
    finally:
        guard.close()
    return record


async def test_finished_stream_ends_with_done_event_and_usage() -> None:
    sink = RecordingSink()
    chunks = [content_chunk("Hel"), content_chunk("lo"), finish_chunk(), usage_chunk()]
    record = await run_relay(from_list(chunks), NativeDialect("s1", 1000), sink)
    assert record.outcome is Outcome.COMPLETED
    assert sink.writes[-1].startswith(b"id: s1:3\nevent: done\n")
    done = orjson.loads(sink.writes[-1].split(b"data: ", 1)[1])
    assert done == {"finish_reason": "stop", "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


async def test_openai_stream_forwards_chunk_bytes_unchanged_then_done() -> None:
    sink = RecordingSink()
    chunks = [content_chunk("Hi"), finish_chunk()]
    await run_relay(from_list(chunks), OpenAIDialect(include_usage=False), sink)
    assert sink.writes == [
        b"data: " + chunks[0].raw + b"\n\n",
        b"data: " + chunks[1].raw + b"\n\n",
        b"data: [DONE]\n\n",
    ]


async def test_usage_chunk_reaches_openai_client_only_when_asked() -> None:
    chunks = [content_chunk("Hi"), finish_chunk(), usage_chunk()]
    without, with_usage = RecordingSink(), RecordingSink()
    await run_relay(from_list(chunks), OpenAIDialect(include_usage=False), without)
    await run_relay(from_list(chunks), OpenAIDialect(include_usage=True), with_usage)
    assert b'"usage"' not in without.text
    assert b'"usage":{"prompt_tokens":3' in with_usage.text


async def test_stream_cut_before_finish_ends_with_error_event_not_done() -> None:
    sink = RecordingSink()
    record = await run_relay(from_list([content_chunk("Hi")]), NativeDialect("s", 1000), sink)
    assert record.outcome is Outcome.UPSTREAM_ERROR
    assert b"event: failed" in sink.writes[-1]
    assert b"event: done" not in sink.text
    assert b'"code":"upstream_stream_broken"' in sink.writes[-1]


async def test_openai_stream_cut_before_finish_ends_with_error_envelope_and_no_done() -> None:
    sink = RecordingSink()
    await run_relay(from_list([content_chunk("Hi")]), OpenAIDialect(include_usage=False), sink)
    assert sink.writes[-1].startswith(b'data: {"error":{"message":')
    assert b"[DONE]" not in sink.text


async def test_upstream_error_event_becomes_final_failure() -> None:
    sink = RecordingSink()
    error = parse_chunk(b'{"error": {"message": "boom", "type": "server_error", "code": "overloaded"}}')
    record = await run_relay(
        from_list([content_chunk("a"), error, content_chunk("never")]), NativeDialect("s", 1), sink
    )
    assert record.outcome is Outcome.UPSTREAM_ERROR
    failure = orjson.loads(sink.writes[-1].split(b"data: ", 1)[1])
    assert failure["error"]["message"] == "boom"
    assert failure["error"]["code"] == "overloaded"
    assert b"never" not in sink.text


async def test_idle_upstream_ends_stream_with_timeout_event() -> None:
    sink = RecordingSink()
    silence = asyncio.Event()
    deadlines = Deadlines(first_token=30, idle=0.05, total=60, send=30)
    record = await run_relay(from_list([content_chunk("a")], then=silence), NativeDialect("s", 1), sink, deadlines)
    assert record.outcome is Outcome.TIMEOUT
    assert b'"code":"idle_timeout"' in sink.writes[-1]


async def test_silent_upstream_before_first_token_ends_with_first_token_timeout() -> None:
    sink = RecordingSink()
    deadlines = Deadlines(first_token=0.05, idle=30, total=60, send=30)
    record = await run_relay(from_list([], then=asyncio.Event()), NativeDialect("s", 1), sink, deadlines)
    assert record.outcome is Outcome.TIMEOUT
    assert b'"code":"first_token_timeout"' in sink.writes[-1]


async def test_total_timeout_ends_a_stream_that_keeps_flowing() -> None:
    async def endless() -> AsyncIterator[list[Chunk]]:
        while True:
            yield [content_chunk("x")]
            await asyncio.sleep(0)  # let the guard's timer run between chunks, as a socket read would

    sink = RecordingSink()
    deadlines = Deadlines(first_token=30, idle=30, total=0.05, send=30)
    record = await run_relay(endless(), OpenAIDialect(include_usage=False), sink, deadlines)
    assert record.outcome is Outcome.TIMEOUT
    assert b'"code":"total_timeout"' in sink.writes[-1]


async def test_client_that_accepts_nothing_is_cut_after_send_timeout_without_final_event() -> None:
    sink = RecordingSink()
    sink.release.clear()
    cut = asyncio.Event()
    record = new_record()

    async def serve() -> None:
        guard = StreamGuard(Deadlines(first_token=30, idle=30, total=60, send=0.05), on_send_timeout=cut.set)
        try:
            chunks = from_list([content_chunk("a"), finish_chunk()])
            await relay(chunks, NativeDialect("s", 1), sink, guard, record, final_write_timeout=1)
        finally:
            guard.close()

    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(serve())
    assert cut.is_set()
    assert record.outcome is Outcome.TIMEOUT
    assert record.error_code == "send_timeout"
    assert sink.writes == []


async def test_relay_reads_next_chunk_only_after_the_write_returned() -> None:
    pulled: list[int] = []

    async def counting() -> AsyncIterator[list[Chunk]]:
        for i in range(3):
            pulled.append(i)
            yield [content_chunk(str(i))]
        yield [finish_chunk()]

    sink = RecordingSink()
    sink.release.clear()
    task = asyncio.create_task(run_relay(counting(), NativeDialect("s", 1), sink))
    await sink.blocked.wait()
    assert pulled == [0]  # the client is not reading: nothing more is taken from the upstream
    sink.release.set()
    record = await task
    assert pulled == [0, 1, 2]
    assert record.outcome is Outcome.COMPLETED


async def test_client_cancellation_propagates_and_counts_relayed_tokens() -> None:
    never = asyncio.Event()
    sink = RecordingSink()
    record = new_record()
    guard = StreamGuard(GENEROUS)
    task = asyncio.create_task(
        relay(
            from_list([content_chunk("a"), content_chunk("b")], then=never),
            NativeDialect("s", 1),
            sink,
            guard,
            record,
            final_write_timeout=1,
        )
    )
    await sink.wait_for_writes(2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    guard.close()
    assert record.outcome is Outcome.CLIENT_DISCONNECTED
    assert record.usage_for_log() == {"completion_tokens": 2, "counted_by": "sluice"}


async def test_shutdown_ends_stream_with_retry_hint() -> None:
    sink = RecordingSink()
    record = new_record()
    guards: asyncio.Queue[StreamGuard] = asyncio.Queue()

    async def serve() -> None:
        guard = StreamGuard(GENEROUS)  # watches this task, as in the gateway
        guards.put_nowait(guard)
        chunks = from_list([content_chunk("a")], then=asyncio.Event())
        await relay(chunks, NativeDialect("s", 1), sink, guard, record, final_write_timeout=1, shutdown_retry_ms=5000)
        guard.close()

    task = asyncio.create_task(serve())
    guard = await guards.get()
    await sink.wait_for_writes(1)
    guard.shutdown()
    await task
    assert record.outcome is Outcome.SHUTDOWN
    assert sink.writes[-1].startswith(b"retry: 5000\n")
    assert b'"code":"server_shutting_down"' in sink.writes[-1]


@pytest.mark.parametrize("expiry", ["first_token", "idle", "total", "shutdown"])
async def test_a_stream_a_guard_ended_is_logged_with_the_error_code_its_client_received(expiry: str) -> None:
    sink = RecordingSink()
    record = new_record()
    short = {"first_token": 0.05, "idle": 0.05, "total": 0.2}.get(expiry, 30)
    deadlines = Deadlines(
        first_token=short if expiry == "first_token" else 30,
        idle=short if expiry == "idle" else 30,
        total=short if expiry == "total" else 60,
        send=30,
    )
    guards: asyncio.Queue[StreamGuard] = asyncio.Queue()

    async def serve() -> None:
        guard = StreamGuard(deadlines)  # watches this task, as in the gateway
        guards.put_nowait(guard)
        before = [] if expiry == "first_token" else [content_chunk("a")]
        await relay(
            from_list(before, then=asyncio.Event()), OpenAIDialect(False), sink, guard, record, final_write_timeout=1
        )
        guard.close()

    task = asyncio.create_task(serve())
    guard = await guards.get()
    if expiry == "shutdown":
        await sink.wait_for_writes(1)
        guard.shutdown()
    await task
    received = orjson.loads(sink.writes[-1].removeprefix(b"data: "))["error"]["code"]
    assert record.error_code == received


async def test_chunks_that_arrived_together_go_out_in_one_write_in_order() -> None:
    async def one_read() -> AsyncIterator[list[Chunk]]:
        yield [content_chunk("a"), content_chunk("b"), finish_chunk()]

    sink = RecordingSink()
    record = await run_relay(one_read(), NativeDialect("s", 1), sink)
    assert record.outcome is Outcome.COMPLETED
    assert len(sink.writes) == 2  # the batch, then the done event
    assert sink.writes[0].index(b'"a"') < sink.writes[0].index(b'"b"')


async def test_error_inside_a_batch_sends_what_came_before_it_then_the_failure() -> None:
    async def one_read() -> AsyncIterator[list[Chunk]]:
        yield [content_chunk("a"), parse_chunk(b'{"error": {"message": "boom"}}'), content_chunk("never")]

    sink = RecordingSink()
    record = await run_relay(one_read(), OpenAIDialect(include_usage=False), sink)
    assert record.outcome is Outcome.UPSTREAM_ERROR
    assert b'"content":"a"' in sink.writes[0]
    assert b"never" not in sink.text
    assert sink.writes[-1].startswith(b'data: {"error":{"message":"boom"')


class GapRecorder:
    def __init__(self) -> None:
        self.gaps: list[float] = []

    def observe(self, amount: float) -> None:
        self.gaps.append(amount)

    def flush(self) -> None:
        pass


async def test_gaps_are_measured_between_reads_that_carry_tokens_only() -> None:
    async def reads() -> AsyncIterator[list[Chunk]]:
        yield [content_chunk("a")]
        yield [content_chunk("b"), content_chunk("c")]  # one read: one gap, not two
        yield [finish_chunk()]  # no token: no gap
        yield [usage_chunk()]

    recorder = GapRecorder()
    record = new_record()
    guard = StreamGuard(GENEROUS)
    try:
        await relay(
            reads(), NativeDialect("s", 1), RecordingSink(), guard, record, final_write_timeout=1, gaps=recorder
        )
    finally:
        guard.close()
    assert len(recorder.gaps) == 1
    assert record.chunks_relayed == 3


class FlushRecorder(GapRecorder):
    """Notes how many writes the sink had seen at each flush of the gaps."""

    def __init__(self, sink: RecordingSink) -> None:
        super().__init__()
        self.sink = sink
        self.flushed_after: list[int] = []

    def flush(self) -> None:
        self.flushed_after.append(len(self.sink.writes))


async def test_a_finished_streams_gaps_are_published_before_its_last_write() -> None:
    """A client that read the end of its stream finds the stream's gaps in /metrics.

    Catches: no flush before the last write (server/relay.py, `_finish`).
    """

    async def reads() -> AsyncIterator[list[Chunk]]:
        yield [content_chunk("a")]
        yield [content_chunk("b")]
        yield [finish_chunk()]

    sink = RecordingSink()
    recorder = FlushRecorder(sink)
    guard = StreamGuard(GENEROUS)
    try:
        await relay(reads(), NativeDialect("s", 1), sink, guard, new_record(), final_write_timeout=1, gaps=recorder)
    finally:
        guard.close()
    assert b"event: done" in sink.writes[-1]
    assert recorder.flushed_after[0] == len(sink.writes) - 1


async def test_a_failed_streams_gaps_are_published_too() -> None:
    """A stream that ends with an error event still adds its gaps to the histogram.

    Catches: gaps flushed only for finished streams (server/relay.py, `relay`'s `finally`).
    """

    async def reads() -> AsyncIterator[list[Chunk]]:
        yield [content_chunk("a")]
        yield [content_chunk("b")]
        yield [parse_chunk(b'{"error":{"message":"boom","code":"overloaded"}}')]

    sink = RecordingSink()
    recorder = FlushRecorder(sink)
    guard = StreamGuard(GENEROUS)
    try:
        await relay(reads(), NativeDialect("s", 1), sink, guard, new_record(), final_write_timeout=1, gaps=recorder)
    finally:
        guard.close()
    assert b"event: failed" in sink.writes[-1]
    assert recorder.flushed_after
    assert len(recorder.gaps) == 1


class FramingCheckSink(RecordingSink):
    """A sink whose final write fails its own consistency check, as the store sink's framing check does."""

    async def write(self, data: bytes) -> None:
        if b"event: failed" in data:
            raise RuntimeError("stored 1 events of 2: the framing broke")
        await super().write(data)


async def test_a_bug_in_the_sink_writing_the_final_event_is_raised_not_swallowed() -> None:
    """Only what a gone client raises is ignored on the final write; a sink's own RuntimeError surfaces.

    Catches: `_write_final` in server/relay.py catching RuntimeError, which hid the store sink's
    framing check (server/streams/generation.py) behind a stream that seemed to end normally.
    """
    with pytest.raises(RuntimeError, match="framing broke"):
        await run_relay(from_list([content_chunk("Hi")]), NativeDialect("s", 1000), FramingCheckSink())


async def test_a_client_gone_before_the_final_event_ends_the_relay_quietly() -> None:
    class GoneSink(RecordingSink):
        async def write(self, data: bytes) -> None:
            if b"event: failed" in data:
                raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")
            await super().write(data)

    record = await run_relay(from_list([content_chunk("Hi")]), NativeDialect("s", 1000), GoneSink())

    assert record.outcome is Outcome.UPSTREAM_ERROR


def choice_chunk(index: int, delta: dict[str, object], reason: str | None = None) -> Chunk:
    return parse_chunk(orjson.dumps({"choices": [{"index": index, "delta": delta, "finish_reason": reason}]}))


async def test_a_stream_that_finished_every_choice_it_started_is_done_whatever_n_asked_for() -> None:
    """An upstream that ignores `n` (Ollama, many OpenRouter providers) streams one choice: a whole answer.

    Catches: RelayEvents (server/relay_events.py) waiting for the request's `n` choices to finish.
    """
    sink = RecordingSink()
    chunks = [choice_chunk(0, {"content": "Hi"}), choice_chunk(0, {}, "stop")]
    record = await run_relay(from_list(chunks), OpenAIDialect(include_usage=False), sink, choices=2)
    assert record.outcome is Outcome.COMPLETED
    assert sink.writes[-1] == b"data: [DONE]\n\n"


async def test_a_choice_that_started_and_did_not_finish_is_still_a_cut() -> None:
    sink = RecordingSink()
    chunks = [choice_chunk(0, {"content": "a"}), choice_chunk(1, {"content": "b"}), choice_chunk(0, {}, "stop")]
    record = await run_relay(from_list(chunks), OpenAIDialect(include_usage=False), sink, choices=2)
    assert record.outcome is Outcome.UPSTREAM_ERROR
    assert b'"code":"upstream_stream_broken"' in sink.writes[-1]
    assert b"[DONE]" not in sink.text


REASONING: dict[str, object] = {"reasoning_content": "Let me think."}


async def test_a_reasoning_delta_is_relayed_on_v1_as_a_token() -> None:
    """It is the stream's first token (its time to first token) and counts as relayed, as content does."""
    sink = RecordingSink()
    chunks = [choice_chunk(0, {"role": "assistant"}), choice_chunk(0, REASONING), content_chunk("Hi"), finish_chunk()]
    record = await run_relay(from_list(chunks), OpenAIDialect(include_usage=False), sink)
    assert sink.writes[1] == b"data: " + chunks[1].raw + b"\n\n"
    assert (record.chunks_relayed, record.first_token_at is not None) == (2, True)


async def test_a_reasoning_delta_beside_usage_reaches_a_client_that_did_not_ask_for_usage() -> None:
    """Only a chunk of usage alone is kept from such a client: one that carries a token is relayed."""
    sink = RecordingSink()
    usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    both = parse_chunk(orjson.dumps({"choices": [{"index": 0, "delta": REASONING}], "usage": usage}))
    await run_relay(from_list([both, content_chunk("Hi"), finish_chunk()]), OpenAIDialect(include_usage=False), sink)
    assert sink.writes[0] == b"data: " + both.raw + b"\n\n"


async def test_a_native_stream_sends_nothing_for_a_reasoning_delta() -> None:
    """Native `token` events carry the answer's text only: no empty token, no gap in the sequence."""
    sink = RecordingSink()
    chunks = [choice_chunk(0, {"role": "assistant"}), choice_chunk(0, REASONING), content_chunk("Hi"), finish_chunk()]
    record = await run_relay(from_list(chunks), NativeDialect("s", 1000), sink)
    assert record.outcome is Outcome.COMPLETED
    assert [write.split(b"\ndata: ")[0] for write in sink.writes] == [b"id: s:1\nevent: token", b"id: s:2\nevent: done"]
    assert b"think" not in sink.text


async def test_streams_share_one_empty_set_of_finished_choices() -> None:
    """Until a choice finishes, no stream holds a set of its own (216 bytes of every live stream)."""
    first, second = (RelayEvents(OpenAIDialect(False), new_record(), _NoGaps(), 1) for _ in range(2))
    assert first.finished is second.finished
    assert not first.finished


class BufferedBody:
    """An upstream body that arrived whole: read by the pulling relay (`read`) or pushed (`take`)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.on_data: Callable[[], None] | None = None
        self.failure: Exception | None = None

    def take(self) -> bytes:
        data, self._data = self._data, b""
        return data

    async def read(self) -> bytes:
        return self.take()

    @property
    def at_eof(self) -> bool:
        return not self._data

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass


class BufferedResponse:
    def __init__(self, data: bytes) -> None:
        self.body = BufferedBody(data)

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


class PushingSink(RecordingSink):
    """A client that reads everything, written to from the upstream's data callback: the push relay's sink."""

    client_gone = False

    def send_now(self, data: bytes) -> bool:
        self.writes.append(data)
        return True

    async def wait_for_room(self) -> None:
        pass

    def on_client_gone(self, callback: Callable[[], None]) -> Callable[[], None]:
        return lambda: None


# An upstream's error inside a stream, as OpenAI-compatible providers send it.
ERROR_EVENTS = {
    "openai": b'data: {"error":{"message":"upstream says no","type":"server_error","code":"overloaded"}}\n\n',
    "message_only": b'data: {"error":{"message":"upstream says no"}}\n\n',
    "text": b'data: {"error":"upstream says no"}\n\n',
    "named": b'event: error\ndata: {"message":"upstream says no","type":"server_error"}\n\n',
    "vllm": b'data: {"object":"error","message":"upstream says no","type":"InternalServerError","code":500}\n\n',
}
ROLE = b'{"choices":[{"index":0,"delta":{"role":"assistant"},"finish_reason":null}]}'
TOKEN = b'{"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}'
AFTER = b'data: {"choices":[{"index":0,"delta":{"content":"never"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'


@pytest.mark.parametrize("sink_type", [PushingSink, RecordingSink], ids=["push", "pull"])
@pytest.mark.parametrize("event", ERROR_EVENTS.values(), ids=list(ERROR_EVENTS))
async def test_an_upstream_error_in_each_providers_form_ends_the_stream_with_sluices_error_and_none_of_it_relayed(
    event: bytes, sink_type: type[RecordingSink]
) -> None:
    body = b"data: " + ROLE + b"\n\ndata: " + TOKEN + b"\n\n" + event + AFTER
    stream = UpstreamStream(BufferedResponse(body), "test")
    sink = sink_type()
    record = await run_relay(stream, OpenAIDialect(include_usage=False), sink)  # type: ignore[arg-type]
    relayed, final = sink.text.rsplit(b"data: ", 1)
    assert record.outcome is Outcome.UPSTREAM_ERROR
    assert relayed == b"data: " + ROLE + b"\n\ndata: " + TOKEN + b"\n\n"
    error = orjson.loads(final)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] == "upstream says no"


@pytest.mark.parametrize("sink_type", [PushingSink, RecordingSink], ids=["push", "pull"])
async def test_the_last_read_of_a_stream_that_ends_short_of_a_choice_is_relayed_before_the_error(
    sink_type: type[RecordingSink],
) -> None:
    """Held to leave with the done event, the last read's chunks went nowhere when the end was an error.

    Catches: `_finish` (server/relay.py) raising `done()`'s error before writing what it held.
    """
    head = b'data: {"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}\n\n'
    last = (
        b'data: {"choices":[{"index":1,"delta":{"content":"b"},"finish_reason":null}]}\n\n'
        b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    )
    sink = sink_type()
    record = await run_relay(UpstreamStream(BufferedResponse(head + last), "test"), OpenAIDialect(False), sink)  # type: ignore[arg-type]
    relayed, final = sink.text.rsplit(b"data: ", 1)
    assert record.outcome is Outcome.UPSTREAM_ERROR
    assert relayed == head + last.removesuffix(b"data: [DONE]\n\n")
    assert orjson.loads(final)["error"]["code"] == "upstream_stream_broken"


async def test_an_upstream_silent_after_finishing_every_choice_ends_the_stream_as_done() -> None:
    """No [DONE] and no end of body after the finish: idle_timeout ends a whole answer as done, not failed.

    Catches: the relay (server/relay.py) ending every idle expiry with an error event.
    """
    sink = RecordingSink()
    deadlines = Deadlines(first_token=30, idle=0.05, total=60, send=30)
    chunks = from_list([content_chunk("a"), finish_chunk()], then=asyncio.Event())
    record = await run_relay(chunks, NativeDialect("s", 1), sink, deadlines)
    assert record.outcome is Outcome.COMPLETED
    assert sink.writes[-1].startswith(b"id: s:2\nevent: done\n")
