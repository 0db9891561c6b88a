"""The body an upstream with `portable_body = true` gets: only fields every OpenAI-compatible server knows.

Sluice adds two fields of its own to what a client asks for: `stream_options.include_usage` on
every stream (so that each stream's tokens are logged), and on the original API (`/chat`,
`/chat/stream`, browser streams) the caller's `max_tokens` as `max_completion_tokens`, OpenAI's
current name, which its reasoning models require. Strict servers refuse a field they do not know
(Mistral: 422 "Extra inputs are not permitted"; some Azure API versions, Bedrock, Databricks), and
llama.cpp's server ignores `max_completion_tokens`, so the cap vanished. A portable upstream gets
neither: the client's own `stream_options` as it sent them (or none), and Sluice's token limit as
`max_tokens`. A stream without usage is then counted by Sluice (`counted_by: sluice` in the access
log), unless the upstream sends its usage anyway.

The body is built once, before routing picks an upstream (it may try several, hedge, fall back).
So each value Sluice adds remembers what it stands for, as a subclass that serialises as the plain
value, and survives the copies routing and continuation make (`{**body, ...}`): a portable
upstream's body is derived where its attempt is sent, and every other upstream gets the body as
built, neither copied nor serialised twice.
"""

from __future__ import annotations

from typing import Any, Final

TOKEN_LIMIT = "max_completion_tokens"
PORTABLE_TOKEN_LIMIT = "max_tokens"
STREAM_OPTIONS = "stream_options"


# What UsageAsked.sent holds when the client sent no `stream_options` at all (None is its `null`).
NOT_SENT: Final = object()


class UsageAsked(dict[str, Any]):
    """`stream_options` with Sluice's `include_usage: true`; `sent`: what the client sent (NOT_SENT: nothing)."""

    __slots__ = ("sent",)

    def __init__(self, sent: object = NOT_SENT) -> None:
        super().__init__(sent if isinstance(sent, dict) else (), include_usage=True)
        self.sent = sent


# The stream options of every stream whose client sent none: made once, never changed.
ASK_USAGE = UsageAsked()


def asking_usage(body: dict[str, Any]) -> UsageAsked:
    """The `stream_options` Sluice sends for a /v1 stream `body`: the client's, asking for usage too."""
    if STREAM_OPTIONS not in body:
        return ASK_USAGE  # the common case: nothing made per request
    return UsageAsked(body[STREAM_OPTIONS])


class OwnTokenLimit(int):
    """The original API's token limit, sent as `max_completion_tokens` (`max_tokens` to a portable upstream)."""

    __slots__ = ()


def lowered(limit: object, tokens: int) -> int:
    """`tokens` as the token limit in place of `limit`: Sluice's own stays Sluice's (see OwnTokenLimit)."""
    return OwnTokenLimit(tokens) if isinstance(limit, OwnTokenLimit) else tokens


def portable(body: dict[str, Any]) -> dict[str, Any]:
    """`body` without what Sluice added: the client's own stream_options (or none), Sluice's token limit as max_tokens.

    `body` itself when Sluice added nothing; a copy otherwise (`body` is shared by every attempt).
    """
    options, limit = body.get(STREAM_OPTIONS), body.get(TOKEN_LIMIT)
    asked = options if isinstance(options, UsageAsked) else None
    own_limit = limit if isinstance(limit, OwnTokenLimit) else None
    if asked is None and own_limit is None:
        return body
    adapted = dict(body)
    if asked is not None:
        if asked.sent is NOT_SENT:
            del adapted[STREAM_OPTIONS]
        else:
            adapted[STREAM_OPTIONS] = asked.sent
    if own_limit is not None:
        del adapted[TOKEN_LIMIT]
        adapted[PORTABLE_TOKEN_LIMIT] = int(own_limit)
    return adapted
