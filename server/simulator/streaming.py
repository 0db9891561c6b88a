"""The streamed (SSE) reply, including mid-stream faults and backpressure."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from .answer import Answer
from .connection import cut_connection, hang_until_shutdown
from .keys import STATS_KEY
from .plan import Fault
from .stats import Outcome, StreamRecord
from .wire import (
    DONE_EVENT,
    ERROR_BARE_EVENT,
    ERROR_EVENT,
    ERROR_NAMED_EVENT,
    ERROR_OBJECT_EVENT,
    ERROR_TEXT_EVENT,
    MALFORMED_EVENT,
    StreamFrames,
)

# The error faults: the event each sends, after which the stream's body ends.
ERROR_EVENTS = {
    Fault.ERROR_EVENT: ERROR_EVENT,
    Fault.ERROR_TEXT: ERROR_TEXT_EVENT,
    Fault.ERROR_BARE: ERROR_BARE_EVENT,
    Fault.ERROR_NAMED: ERROR_NAMED_EVENT,
    Fault.ERROR_OBJECT: ERROR_OBJECT_EVENT,
}
# Faults that strike once half of the content tokens have been sent.
MID_STREAM_FAULTS = frozenset({Fault.CUT, Fault.HANG_MID, Fault.MALFORMED, *ERROR_EVENTS})


async def stream_answer(request: web.Request, answer: Answer, record: StreamRecord) -> web.StreamResponse:
    """Send the answer as `text/event-stream` and close the record."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Request-ID": record.request_id,
        }
    )
    # Headers go out now, before the first-token wait, as a real upstream's do.
    await response.prepare(request)
    sender = _StreamSender(request, response, answer, record)
    try:
        await sender.run()
    except ConnectionError:
        # The client left and the write noticed before any cancellation did.
        sender.close(Outcome.CLIENT_ABORTED)
    return response


class _StreamSender:
    """One stream's write loop; keeps per-event work to a concatenation and a write."""

    __slots__ = (
        "_answer",
        "_choices",
        "_frames",
        "_probe",
        "_record",
        "_request",
        "_response",
        "_stats",
    )

    def __init__(
        self,
        request: web.Request,
        response: web.StreamResponse,
        answer: Answer,
        record: StreamRecord,
    ) -> None:
        self._request = request
        self._response = response
        self._answer = answer
        self._record = record
        self._stats = request.app[STATS_KEY]
        # Every choice's frames, index 0 first: more than one only when the request asked for n > 1.
        self._choices = tuple(
            StreamFrames(answer.completion_id, answer.created, answer.model, answer.include_usage, index)
            for index in range(len(answer.replies))
        )
        self._frames = self._choices[0]
        # writing_paused is a BaseProtocol property in aiohttp 3.14; without
        # it (other versions) pause detection is simply skipped.
        self._probe = hasattr(request.protocol, "writing_paused")

    def close(self, outcome: Outcome) -> None:
        """Record how the stream ended."""
        self._stats.close(self._record, outcome)

    async def run(self) -> None:
        """Write every event, injecting the planned fault on the way."""
        answer, frames, record = self._answer, self._frames, self._record
        plan = answer.plan
        count = answer.reply.count
        at = count // 2 if plan.fault_at is None else min(plan.fault_at, count)
        fault_at = at if plan.fault in MID_STREAM_FAULTS else -1

        if plan.fault is Fault.HANG_FIRST:
            await self._hang()
            return
        await self._send(b"".join([choice.role() for choice in self._choices]))
        if len(self._choices) > 1:
            if await self._send_choice_steps(fault_at):
                return
        else:
            for index, piece in enumerate(answer.reply.iter_json()):
                if index == fault_at and await self._inject(plan.fault):
                    return
                delay_ms = plan.ttft_ms if index == 0 else plan.gap_ms
                if delay_ms > 0:
                    await asyncio.sleep(delay_ms / 1000)
                await self._send(frames.content(piece))
                if index == 0:
                    record.first_token_at = time.time()
                record.chunks_sent += 1
        # An empty reply still gets its fault, just before the finish events.
        if fault_at == count and await self._inject(plan.fault):
            return
        await self._send(b"".join([choice.finish(answer.finish_reason) for choice in self._choices]))
        if answer.include_usage:
            await self._send(frames.usage(answer.prompt_tokens, answer.completion_tokens))
        if plan.fault is not Fault.NO_DONE:
            await self._send(DONE_EVENT)
        self.close(Outcome.COMPLETED if plan.fault is Fault.NONE else Outcome.FAULT)

    async def _send_choice_steps(self, fault_at: int) -> bool:
        """Each token step, one content chunk per choice (n > 1), in index order; True when a fault ended the stream.

        A loop of its own so that the n=1 loop in run(), the one benchmarks measure, does no per-choice work.
        """
        answer, choices, record = self._answer, self._choices, self._record
        plan = answer.plan
        steps = zip(*[reply.iter_json() for reply in answer.replies], strict=True)
        for index, pieces in enumerate(steps):
            if index == fault_at and await self._inject(plan.fault):
                return True
            delay_ms = plan.ttft_ms if index == 0 else plan.gap_ms
            if delay_ms > 0:
                await asyncio.sleep(delay_ms / 1000)
            # One write per step however many choices: a write, not a chunk, is what costs.
            await self._send(b"".join(map(StreamFrames.content, choices, pieces)))
            if index == 0:
                record.first_token_at = time.time()
            record.chunks_sent += len(pieces)
        return False

    async def _send(self, event: bytes) -> None:
        await self._response.write(event)
        if self._probe and not self._record.paused and self._request.protocol.writing_paused:
            self._stats.mark_paused(self._record)

    async def _inject(self, fault: Fault) -> bool:
        """Apply a mid-stream fault; True when the stream must end here."""
        if fault is Fault.MALFORMED:
            await self._send(MALFORMED_EVENT)
            return False
        if (error_event := ERROR_EVENTS.get(fault)) is not None:
            await self._send(error_event)
            self.close(Outcome.FAULT)
            return True
        if fault is Fault.HANG_MID:
            await self._hang()
            return True
        assert fault is Fault.CUT, fault
        self.close(Outcome.FAULT)
        cut_connection(self._request)
        return True

    async def _hang(self) -> None:
        await hang_until_shutdown(self._request)
        self.close(Outcome.FAULT)
        cut_connection(self._request)
