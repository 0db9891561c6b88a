"""Decide the whole answer to a chat request before sending any of it."""

from __future__ import annotations

import time
from dataclasses import dataclass

from .chat_request import ChatRequest
from .plan import Plan, PlanError, parse_directive, resolve_plan, split_directive
from .script import Reply, choice_seed, count_prompt_tokens, echo_reply, generated_reply, prompt_seed
from .settings import Pace

# The most tokens a reply that is not streamed holds over all its choices: it is built whole, in
# the event loop of a process that may be the gateway's own, and a `tokens` of 10**20 froze it.
# About 600 KB of text, a model's longest answers; a stream may be as long as asked, built lazily.
MAX_WHOLE_REPLY_TOKENS = 100_000


@dataclass(frozen=True, slots=True)
class Answer:
    """Everything needed to send one reply, streamed or not."""

    completion_id: str
    created: int
    model: str
    plan: Plan
    # One reply per choice (OpenAI's `n`), index 0 first; all of the same length.
    replies: tuple[Reply, ...]
    finish_reason: str
    prompt_tokens: int
    include_usage: bool

    @property
    def reply(self) -> Reply:
        """The first choice's reply: the only one unless the request asked for n > 1."""
        return self.replies[0]

    @property
    def completion_tokens(self) -> int:
        """Tokens over all choices, as OpenAI's usage counts them."""
        return sum(reply.count for reply in self.replies)


def build_answer(chat: ChatRequest, defaults: Pace, completion_id: str) -> Answer:
    """Apply steering and max_tokens to produce the reply.

    Raises PlanError for bad steering values.
    """
    directive, user_text = split_directive(chat.last_user_text or "")
    plan = resolve_plan(defaults, parse_directive(directive) if directive is not None else {}, chat.sim)
    limit = chat.max_tokens
    replies = _replies(chat, plan, user_text)
    finish_reason = "stop"
    # Every choice has the same length, so the limit cuts all of them or none.
    if limit is not None and replies[0].count > limit:
        replies = tuple(reply.truncated(limit) for reply in replies)
        finish_reason = "length"
    if not chat.stream and replies[0].count * len(replies) > MAX_WHOLE_REPLY_TOKENS:
        raise PlanError(
            "tokens",
            plan.tokens,
            f"a reply that is not streamed holds at most {MAX_WHOLE_REPLY_TOKENS} tokens over all its choices",
        )
    return Answer(
        completion_id=completion_id,
        created=int(time.time()),
        model=chat.model,
        plan=plan,
        replies=replies,
        finish_reason=finish_reason,
        prompt_tokens=count_prompt_tokens(chat.contents),
        include_usage=chat.include_usage,
    )


def _replies(chat: ChatRequest, plan: Plan, user_text: str) -> tuple[Reply, ...]:
    """One reply per choice: echoes are all the same text, generated replies each their own words."""
    if plan.echo:
        return (echo_reply(user_text, plan.chunk_chars),) * chat.n
    seed = prompt_seed(chat.contents)
    return tuple(generated_reply(choice_seed(seed, choice), plan.tokens) for choice in range(chat.n))
