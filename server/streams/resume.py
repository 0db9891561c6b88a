"""The event ids of detached streams, `<stream id>:<seq>`, and the resume point a reconnect names."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from aiohttp import web

from ..errors import InvalidRequestError

HEADER = "Last-Event-ID"
QUERY = "lastEventId"
# Stream ids are URL-safe base64 (no `:` or line break), so an id splits and frames unambiguously.
_EVENT_ID = re.compile(r"([A-Za-z0-9_-]{1,64}):([0-9]{1,18})")


def new_stream_id() -> str:
    """An unguessable id: holding it is what lets a client read the stream."""
    return secrets.token_urlsafe(16)


def event_id(stream_id: str, seq: int) -> str:
    """The `id:` value of event `seq` (0 names the point before the first event)."""
    return f"{stream_id}:{seq}"


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """The stream a reconnect names and the last event it has."""

    stream_id: str
    seq: int


def resume_point(request: web.Request) -> ResumePoint | None:
    """The `Last-Event-ID` header, else the `lastEventId` query parameter; None when neither is set.

    EventSource sends the header on its own when it reconnects; the parameter serves clients that
    cannot set headers. A value that is not an id Sluice gave out is a 400 naming the field.
    """
    headers = request.headers.getall(HEADER, ())
    if len(headers) > 1:
        raise InvalidRequestError(f"{HEADER}: given {len(headers)} times; give it once.", param=HEADER)
    value, field = (headers[0] if headers else ""), HEADER
    if not value:
        # yarl keeps the first of a repeated name: which one the client meant is not known.
        given = request.query.getall(QUERY, ())
        if len(given) > 1:
            raise InvalidRequestError(f"{QUERY}: given {len(given)} times in the query; give it once.", param=QUERY)
        value, field = (given[0] if given else ""), QUERY
    if not value:
        return None
    match = _EVENT_ID.fullmatch(value)
    if match is None:
        raise InvalidRequestError(f"{field}: not an event id of a Sluice stream.", param=field)
    return ResumePoint(match.group(1), int(match.group(2)))
