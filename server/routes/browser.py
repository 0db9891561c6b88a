"""The browser's streaming API: EventSource can only GET, without headers or a body.

    POST   /chat/streams        start a detached stream (same body as POST /chat) -> 201 {id, url}
    GET    /chat/streams/{id}   its events (native dialect), resumable with Last-Event-ID
    DELETE /chat/streams/{id}   stop it now: the upstream is closed before the answer
    GET    /chat/stream?message=…&model=…   start and read in one step, for short prompts;
                                 a reconnect's Last-Event-ID names the stream it attaches to

Unlike the other chat routes, these generations run detached from the connection (see
server/streams/), so a reconnect resumes where it left off.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..errors import InvalidRequestError
from ..keys import METRICS, MODELS, RECORD, REQUEST_ID, SETTINGS, STREAMS, WORKER_PROXY
from ..schemas import ChatRequest
from ..streams.reader import serve_stream
from ..streams.resume import resume_point
from ..validation import parse_model, read_json_object
from ..worker_proxy import forward_to_owner

# Query parameters of the one-step GET; the rest of ChatRequest (history) does not fit a URL.
_QUERY_FIELDS = ("message", "model", "system")


async def create_stream(request: web.Request) -> web.Response:
    """Start generating a reply; 201 with the stream's id and the URL to read it from."""
    stream_id = await _start(request, await read_json_object(request))
    url = str(request.app.router["chat_stream_events"].url_for(stream_id=stream_id))
    return web.json_response({"id": stream_id, "url": url}, status=201, headers={"Location": url})


async def read_stream(request: web.Request) -> web.StreamResponse:
    """The stream's events after Last-Event-ID (or from the start); 204 when there is nothing left."""
    stream_id = request.match_info["stream_id"]
    if (owner := _owner_elsewhere(request, stream_id)) is not None:
        return await _forward(request, owner)
    point = resume_point(request)
    if point is not None and point.stream_id != stream_id:
        raise InvalidRequestError("Last-Event-ID: names another stream.", param="Last-Event-ID")
    return await _serve(request, stream_id, point.seq if point else 0)


async def delete_stream(request: web.Request) -> web.StreamResponse:
    """Stop the stream's generation; 204 whether it was running, already over, or unknown."""
    stream_id = request.match_info["stream_id"]
    if (owner := _owner_elsewhere(request, stream_id)) is not None:
        return await _forward(request, owner)
    await request.app[STREAMS].stop(stream_id)
    return web.Response(status=204)


async def chat_stream_get(request: web.Request) -> web.StreamResponse:
    """Start a stream from the query and read it, or, on a reconnect, resume the stream it names."""
    point = resume_point(request)
    if point is not None:
        if (owner := _owner_elsewhere(request, point.stream_id)) is not None:
            return await _forward(request, owner)
        return await _serve(request, point.stream_id, point.seq)
    fields = {name: request.query[name] for name in _QUERY_FIELDS if name in request.query}
    stream_id = await _start(request, fields)
    return await _serve(request, stream_id, 0)


def _owner_elsewhere(request: web.Request, stream_id: str) -> int | None:
    """The worker that owns `stream_id`, when that is another process (`--workers`)."""
    proxy = request.app.get(WORKER_PROXY)
    return proxy.owner_elsewhere(stream_id) if proxy is not None else None


async def _forward(request: web.Request, owner: int) -> web.StreamResponse:
    """Answer with what worker `owner` answers (see worker_proxy.py)."""
    send_timeout = request.app[SETTINGS].stream.send_timeout
    return await forward_to_owner(
        request, request.app[WORKER_PROXY], owner, request[REQUEST_ID], send_timeout=send_timeout
    )


async def _serve(request: web.Request, stream_id: str, after: int) -> web.StreamResponse:
    """Send the stream's events after `after` on this connection (see streams/reader.py)."""
    return await serve_stream(
        request,
        request.app[STREAMS],
        stream_id,
        after,
        settings=request.app[SETTINGS].stream,
        metrics=request.app[METRICS],
        record=request[RECORD],
    )


async def _start(request: web.Request, data: dict[str, Any]) -> str:
    settings = request.app[SETTINGS]
    chat_request = parse_model(ChatRequest, data, settings)
    model = request.app[MODELS].resolve(chat_request.model or settings.models.default, listed_at="/models")
    record = request[RECORD]
    record.model = model
    return await request.app[STREAMS].start(
        request_id=request[REQUEST_ID],
        route=record.route,
        model=model,
        body=chat_request.upstream_body(model, stream=True),
    )
