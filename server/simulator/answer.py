"""Decide the whole answer to a chat request before sending any of it."""

from __future__ import annotations

import time
from dataclasses import dataclass

from .chat_request import ChatRequest
from .plan import Plan, parse_directive, resolve_plan, split_directive
from .script import Reply, count_prompt_tokens, echo_reply, generated_reply, prompt_seed
from .settings import Pace


@dataclass(frozen=True, slots=True)
class Answer:
    """Everything needed to send one reply, streamed or not."""

    completion_id: str
    created: int
    model: str
    plan: Plan
    reply: Reply
    finish_reason: str
    prompt_tokens: int
    include_usage: bool


def build_answer(chat: ChatRequest, defaults: Pace, completion_id: str) -> Answer:
    """Apply steering and max_tokens to produce the reply.

    Raises PlanError for bad steering values.
    """
    directive, user_text = split_directive(chat.last_user_text or "")
    plan = resolve_plan(defaults, parse_directive(directive) if directive is not None else {}, chat.sim)
    limit = chat.max_tokens
    reply: Reply
    if plan.echo:
        reply = echo_reply(user_text, plan.chunk_chars)
    else:
        reply = generated_reply(prompt_seed(chat.contents), plan.tokens)
    finish_reason = "stop"
    if limit is not None and reply.count > limit:
        reply = reply.truncated(limit)
        finish_reason = "length"
    return Answer(
        completion_id=completion_id,
        created=int(time.time()),
        model=chat.model,
        plan=plan,
        reply=reply,
        finish_reason=finish_reason,
        prompt_tokens=count_prompt_tokens(chat.contents),
        include_usage=chat.include_usage,
    )
