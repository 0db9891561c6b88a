"""The non-streamed reply: one chat.completion object after the full delay."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from .answer import Answer
from .connection import cut_connection, hang_until_shutdown
from .keys import STATS_KEY
from .plan import Fault
from .stats import Outcome, StreamRecord
from .wire import choices_body, usage

MALFORMED_BODY = b'{"id": oops not json'


async def complete_answer(request: web.Request, answer: Answer, record: StreamRecord) -> web.StreamResponse:
    """Answer with a whole JSON body (or misbehave) and close the record.

    cut, hang_* and malformed apply as for streams; no_done and the error_*
    faults only make sense in a stream and are ignored here. Choices are generated side
    by side: the wait is one choice's worth of tokens, whatever `n` is.
    """
    stats = request.app[STATS_KEY]
    plan = answer.plan
    tokens = answer.reply.count
    if plan.fault in (Fault.HANG_FIRST, Fault.HANG_MID):
        await hang_until_shutdown(request)
        return _cut(request, record)
    # A cut strikes where a stream would have been cut: half way through.
    cut_at = tokens // 2 if plan.fault_at is None else min(plan.fault_at, tokens)
    sent = cut_at if plan.fault is Fault.CUT else tokens
    delay_ms = plan.ttft_ms + sent * plan.gap_ms if sent else 0.0
    if delay_ms > 0:
        await asyncio.sleep(delay_ms / 1000)
    if plan.fault is Fault.CUT:
        return _cut(request, record)
    record.first_token_at = time.time()
    record.chunks_sent = answer.completion_tokens
    headers = {"X-Request-ID": record.request_id}
    if plan.fault is Fault.MALFORMED:
        stats.close(record, Outcome.FAULT)
        return web.Response(body=MALFORMED_BODY, content_type="application/json", headers=headers)
    body = choices_body(
        answer.completion_id,
        answer.created,
        answer.model,
        [reply.text() for reply in answer.replies],
        answer.finish_reason,
        usage(answer.prompt_tokens, answer.completion_tokens),
    )
    stats.close(record, Outcome.COMPLETED)
    return web.Response(body=body, content_type="application/json", headers=headers)


def _cut(request: web.Request, record: StreamRecord) -> web.StreamResponse:
    request.app[STATS_KEY].close(record, Outcome.FAULT)
    cut_connection(request)
    # Never sent: aiohttp finds the transport closed and drops it quietly.
    return web.Response()
