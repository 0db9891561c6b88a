"""The browser's streaming API: EventSource can only GET, without headers or a body.

    POST   /chat/streams        start a detached stream (same body as POST /chat) -> 201 {id, url}
    GET    /chat/streams/{id}   its events (native dialect), resumable with Last-Event-ID
    HEAD   /chat/streams/{id}   the status and headers that GET would answer, without reading the stream
    DELETE /chat/streams/{id}   stop it now: the upstream is closed before the answer
    GET    /chat/stream?message=…&model=…   start and read in one step, for short prompts;
                                 a reconnect's Last-Event-ID names the stream it attaches to
    POST   /chat/stream/token   with gateway keys: a browser token for the one-step GET

With gateway keys configured, EventSource (which cannot send headers) authenticates with a browser
token in the URL (`?token=`, see server/auth/tokens.py): `POST /chat/streams` returns its stream's
URL with one, and `POST /chat/stream/token` mints one for the one-step GET. A stream belongs to the
key that started it, by name and hash (`TokenSigner.stream_owner`): no other key, nor one rotated
under its name, reads or stops it.

Unlike the other chat routes, these generations run detached from the connection (see
server/streams/), so a reconnect resumes where it left off.
"""

from __future__ import annotations

import urllib.parse
from functools import partial
from typing import Any

from aiohttp import hdrs, web

from ..auth.tokens import ONE_STEP_SCOPE
from ..errors import InvalidRequestError, ServiceUnavailableError
from ..keys import (
    BODY_BUDGET,
    LIFECYCLE,
    METRICS,
    RECORD,
    REQUEST_ID,
    SETTINGS,
    STREAMS,
    TIMERS,
    TOKEN_BEARING,
    TOKENS,
    WORKER_PROXY,
)
from ..middleware.auth import check_model_for, default_model, request_key, reserve_tokens, take_lease
from ..schemas import ChatRequest
from ..streams.reader import serve_stream, stream_head
from ..streams.resume import QUERY, resume_point
from ..streams.store import StoreUnavailableError
from ..validation import parse_model, read_json_object
from ..worker_proxy import forward_to_owner
from .cors import refuse_foreign_page

# Query parameters of the one-step GET; the rest of ChatRequest (history) does not fit a URL.
_QUERY_FIELDS = ("message", "model", "system")
# Query parameters the one-step GET reads that are not ChatRequest fields (an empty lastEventId
# resumes nothing: some EventSource polyfills send it on their first connection).
_QUERY_CONTROLS = ("token", QUERY)


async def create_stream(request: web.Request) -> web.Response:
    """Start generating a reply; 201 with the stream's id and the URL to read it from."""
    stream_id = await _start(request, await read_json_object(request))
    url = request.app.router["chat_stream_events"].url_for(stream_id=stream_id)
    reply: dict[str, Any] = {"id": stream_id}
    key = request_key(request)
    if key is not None:
        token = request.app[TOKENS].mint(key.name, stream_id, key_digest=key.digest)
        url = url.with_query(token=token.value)
        reply.update(token=token.value, expires_at=token.expires_at)
        request[TOKEN_BEARING] = True
    reply["url"] = str(url)
    return web.json_response(reply, status=201, headers={"Location": str(url)})


async def create_one_step_token(request: web.Request) -> web.Response:
    """A browser token for `GET /chat/stream`; 404 while gateway keys are off (none is needed)."""
    key = request_key(request)
    if key is None:
        raise InvalidRequestError("No gateway keys are configured: GET /chat/stream needs no token.", status=404)
    token = request.app[TOKENS].mint(key.name, ONE_STEP_SCOPE, key_digest=key.digest)
    request[TOKEN_BEARING] = True
    url = request.app.router["chat_stream_get"].url_for().with_query(token=token.value)
    return web.json_response({"token": token.value, "expires_at": token.expires_at, "url": str(url)}, status=201)


async def read_stream(request: web.Request) -> web.StreamResponse:
    """The stream's events after Last-Event-ID (or from the start); 204 when there is nothing left.

    A HEAD gets the status and headers the GET would get, and no reader is attached for it: the
    stream's grace period and hold-back see nobody, and a shared store counts no reader.
    """
    stream_id = request.match_info["stream_id"]
    # Read before forwarding, so every worker answers a bad one as the owner would: the proxy can
    # only pass on a valid one (aiohttp's writer drops the bytes of one that is not UTF-8).
    point = resume_point(request)
    if point is not None and point.stream_id != stream_id:
        raise InvalidRequestError("Last-Event-ID: names another stream.", param="Last-Event-ID")
    if (owner := _owner_elsewhere(request, stream_id)) is not None:
        return await _forward(request, owner)
    access = await _access(request, stream_id)
    if access is False:
        return web.Response(status=204)  # another key's stream is answered as an unknown one
    if request.method == hdrs.METH_HEAD:
        if access is None:
            raise _store_unavailable(request)  # a HEAD is not held (see _serve)
        return await stream_head(
            request.app[STREAMS],
            stream_id,
            point.seq if point else 0,
            settings=request.app[SETTINGS].stream,
            timers=request.app[TIMERS],
        )
    return await _serve(request, stream_id, point.seq if point else 0, known_access=access)


async def delete_stream(request: web.Request) -> web.StreamResponse:
    """Stop the stream's generation; 204 whether it was running, already over, or unknown."""
    stream_id = request.match_info["stream_id"]
    if (owner := _owner_elsewhere(request, stream_id)) is not None:
        return await _forward(request, owner)
    if await _may_access(request, stream_id):
        await request.app[STREAMS].stop(stream_id)
    return web.Response(status=204)


async def chat_stream_get(request: web.Request) -> web.StreamResponse:
    """Start a stream from the query and read it, or, on a reconnect, resume the stream it names."""
    point = resume_point(request)
    if point is not None:
        if (owner := _owner_elsewhere(request, point.stream_id)) is not None:
            return await _forward(request, owner)
        access = await _access(request, point.stream_id)
        if access is False:
            return web.Response(status=204)
        return await _serve(request, point.stream_id, point.seq, known_access=access)
    for name in request.query:
        if name not in _QUERY_FIELDS and name not in _QUERY_CONTROLS:
            raise InvalidRequestError(
                f"{name[:100]}: GET /chat/stream takes only {', '.join(_QUERY_FIELDS)}; "
                "send other fields (history, temperature, max_tokens) to POST /chat/streams.",
                param=name[:100],
            )
    refuse_foreign_page(request)
    stream_id = await _start(request, _query_fields(request))
    return await _serve(request, stream_id, 0)


def _query_fields(request: web.Request) -> dict[str, str]:
    """The one-step GET's fields, each given once and valid UTF-8 once percent-decoded.

    Either would otherwise reach the model changed without a word: yarl keeps the first of a
    repeated name and decodes a byte that is not UTF-8 as U+FFFD.
    """
    query = request.query
    fields: dict[str, str] = {}
    for name in _QUERY_FIELDS:
        values = query.getall(name, ())
        if len(values) > 1:
            raise InvalidRequestError(f"{name}: given {len(values)} times in the query; give it once.", param=name)
        if values:
            fields[name] = values[0]
    for name, value in fields.items():
        if "\ufffd" in value and not _decodes(request.rel_url.raw_query_string):
            raise InvalidRequestError(f"{name}: not UTF-8 text once percent-decoded.", param=name)
    return fields


def _decodes(raw_query: str) -> bool:
    """True when every percent-encoded byte sequence of `raw_query` is UTF-8 (looked at only on a U+FFFD)."""
    try:
        urllib.parse.parse_qsl(raw_query, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        return False
    return True


async def _may_access(request: web.Request, stream_id: str) -> bool:
    """False when gateway keys are on and another key started the stream (or it is unknown); 503 with Redis away."""
    access = await _access(request, stream_id)
    if access is None:
        raise _store_unavailable(request)
    return access


async def _access(request: web.Request, stream_id: str) -> bool | None:
    """As `_may_access`, and None when Redis, which knows the stream's owner, cannot be reached."""
    key = request_key(request)
    if key is None:
        return True
    try:
        return await request.app[STREAMS].may_access(stream_id, request.app[TOKENS].stream_owner(key))
    except StoreUnavailableError:
        return None


def _store_unavailable(request: web.Request) -> ServiceUnavailableError:
    return ServiceUnavailableError(
        "Sluice cannot reach Redis to find the stream; retry shortly.",
        code="store_unavailable",
        headers={"Retry-After": str(request.app[STREAMS].retry_after)},
    )


def _owner_elsewhere(request: web.Request, stream_id: str) -> int | None:
    """The worker that owns `stream_id`, when that is another process (`--workers`)."""
    proxy = request.app.get(WORKER_PROXY)
    return proxy.owner_elsewhere(stream_id) if proxy is not None else None


async def _forward(request: web.Request, owner: int) -> web.StreamResponse:
    """Answer with what worker `owner` answers (see worker_proxy.py)."""
    send_timeout = request.app[SETTINGS].stream.send_timeout
    return await forward_to_owner(
        request,
        request.app[WORKER_PROXY],
        owner,
        request[REQUEST_ID],
        record=request[RECORD],
        client=request[RECORD].client,
        send_timeout=send_timeout,
    )


async def _serve(
    request: web.Request, stream_id: str, after: int, known_access: bool | None = True
) -> web.StreamResponse:
    """Send the stream's events after `after` on this connection (see streams/reader.py).

    `known_access` None: Redis could not say whose the stream is. The reader is held as with Redis
    away, and asks again once it answers, before any event (`may_read`).
    """

    async def may_read() -> bool | None:
        return await _access(request, stream_id)

    return await serve_stream(
        request,
        request.app[STREAMS],
        stream_id,
        after,
        settings=request.app[SETTINGS].stream,
        metrics=request.app[METRICS],
        record=request[RECORD],
        timers=request.app[TIMERS],
        lifecycle=request.app[LIFECYCLE],
        may_read=may_read if known_access is None else None,
    )


async def _start(request: web.Request, data: dict[str, Any]) -> str:
    settings = request.app[SETTINGS]
    chat_request = parse_model(ChatRequest, data, settings)
    model = check_model_for(request, chat_request.model or default_model(request))
    record = request[RECORD]
    record.model = model
    body = chat_request.upstream_body(model, stream=True)
    await reserve_tokens(request, body)
    lease = take_lease(request)
    key = request_key(request)
    owner = request.app[TOKENS].stream_owner(key) if key is not None else ""
    # The stream holds the prompt until it ends, past this request's 201: its bytes go with it.
    body_held, record.body_held = record.body_held, 0
    give_back_body = partial(request.app[BODY_BUDGET].give_back, body_held) if body_held else None
    try:
        return await request.app[STREAMS].start(
            request_id=request[REQUEST_ID],
            route=record.route,
            model=model,
            body=body,
            lease=lease,
            owner=owner,
            give_back_body=give_back_body,
        )
    except BaseException:
        record.body_held = body_held  # no generation took the body: the request gives it back
        if lease is not None:
            lease.transferred = False  # nor the lease
        raise
