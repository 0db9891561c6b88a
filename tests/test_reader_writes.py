"""A browser stream's reader hands its client a replay in writes of at most WRITE_BYTES: a reader
that stops reading holds one such write, not the whole batch it caught up on (a thousand readers of
one stream that never read held a thousand copies of it)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

from server.access import RequestRecord
from server.streams.reader import WRITE_BYTES, DrainEnd, _cut, _follow, _writes
from server.streams.store import Slice, StoredEvent

EVENTS = tuple(StoredEvent(seq, b"id: s:%d\ndata: %s\n\n" % (seq, b"x" * 1000)) for seq in range(1, 101))


class _NeverReading:
    """An SSE response whose client accepts nothing: every write is over the mark, no room comes."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = False

    def send_now(self, data: bytes) -> bool:
        self.written.append(data)
        return False

    async def wait_for_room(self) -> None:
        await asyncio.Event().wait()

    def abort(self) -> None:
        self.aborted = True


def test_a_replay_is_written_in_pieces_of_at_most_write_bytes_in_order() -> None:
    pieces = list(_writes(EVENTS))
    assert len(pieces) > 1
    assert all(len(piece) <= WRITE_BYTES for piece in pieces)
    assert b"".join(pieces) == b"".join(event.data for event in EVENTS)


def test_an_event_larger_than_a_write_goes_alone() -> None:
    large = StoredEvent(2, b"data: " + b"y" * (2 * WRITE_BYTES) + b"\n\n")
    pieces = list(_writes((EVENTS[0], large, EVENTS[2])))
    assert pieces == [EVENTS[0].data, large.data, EVENTS[2].data]


async def test_a_reader_that_stopped_reading_is_handed_one_piece_of_a_replay_not_all_of_it() -> None:
    response = _NeverReading()
    registry = SimpleNamespace(store=None, sent=lambda *_: None)
    end = DrainEnd(cast(Any, SimpleNamespace()))
    record = RequestRecord(started=0.0)
    await _follow(cast(Any, response), cast(Any, registry), "s", 0, Slice(EVENTS, finished=True), 0.05, end, record)
    assert response.aborted
    assert sum(map(len, response.written)) <= WRITE_BYTES


async def test_a_reader_cut_for_taking_nothing_is_logged_as_a_send_timeout() -> None:
    """As the relay logs a stream cut so, not as a client that left."""
    response = _NeverReading()
    registry = SimpleNamespace(store=None, sent=lambda *_: None)
    record = RequestRecord(started=0.0)
    end = DrainEnd(cast(Any, SimpleNamespace()))
    await _follow(cast(Any, response), cast(Any, registry), "s", 0, Slice(EVENTS, finished=True), 0.05, end, record)
    assert (record.outcome, record.error_code) == ("timeout", "send_timeout")


def test_a_reader_whose_client_took_no_heartbeat_is_cut_and_logged_as_a_send_timeout() -> None:
    """The heartbeat's own stall (the reader waiting for events): aborted, and not logged as a client that left."""
    response = _NeverReading()
    record = RequestRecord(started=0.0)
    _cut(cast(Any, response), record)
    assert response.aborted
    assert (record.outcome, record.error_code) == ("timeout", "send_timeout")
