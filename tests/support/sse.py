"""A strict client-side SSE parser (WHATWG rules), for checking exactly what went over the wire."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

_LINE = re.compile(rb"\r\n|\r|\n")


@dataclass
class Event:
    """One dispatched event, or a comment (`comment` set, nothing else)."""

    data: str = ""
    event: str = "message"
    id: str | None = None
    retry: int | None = None
    comment: str | None = None
    fields: list[str] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.data)


class SSEParser:
    """Feed bytes, get events; keeps partial lines between feeds."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None
        self._fields: list[str] = []

    def feed(self, chunk: bytes) -> list[Event]:
        self._buffer += chunk
        events: list[Event] = []
        while True:
            match = _LINE.search(self._buffer)
            # A lone \r at the end may be the first half of \r\n: wait for more.
            if match is None or (match.group() == b"\r" and match.end() == len(self._buffer)):
                break
            line = self._buffer[: match.start()].decode()
            self._buffer = self._buffer[match.end() :]
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> Event | None:
        if line == "":
            if not self._data and self._event is None and self._id is None and self._retry is None:
                return None
            event = Event(
                data="\n".join(self._data),
                event=self._event or "message",
                id=self._id,
                retry=self._retry,
                fields=self._fields,
            )
            self._data, self._event, self._id, self._retry, self._fields = [], None, None, None, []
            return event
        if line.startswith(":"):
            return Event(comment=line[1:].strip())
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        self._fields.append(name)
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None


async def iter_events(response: aiohttp.ClientResponse) -> AsyncIterator[Event]:
    """Events (and comments) of a streaming response, as they arrive."""
    parser = SSEParser()
    async for chunk in response.content.iter_any():
        for event in parser.feed(chunk):
            yield event


async def read_events(response: aiohttp.ClientResponse) -> list[Event]:
    """Every event and comment until the stream ends."""
    return [event async for event in iter_events(response)]


def carries_token(event: Event) -> bool:
    """True for an event with reply text in either dialect (not a comment, role chunk or ending)."""
    return event.comment is None and '"content":"' in event.data and '"content":""' not in event.data


def tokens_text(events: list[Event]) -> str:
    """The reply text carried by native `token` events."""
    return "".join(e.json()["content"] for e in events if e.event == "token" and e.comment is None)


def openai_text(events: list[Event]) -> str:
    """The reply text carried by OpenAI-dialect chunks."""
    text = ""
    for event in events:
        if event.comment is not None or event.data in ("", "[DONE]"):
            continue
        body = event.json()
        for choice in body.get("choices", []):
            text += choice.get("delta", {}).get("content") or ""
    return text
