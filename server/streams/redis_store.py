"""StreamStore on Redis Streams, so any instance can attach to, resume and stop any stream.

The streams this instance produces are kept in a local MemoryStreamStore too: its readers here
read from memory, a running stream goes on when Redis goes away, and it is what catches Redis
up when Redis returns (see redis_write.py). That local copy is what the byte budget bounds, with
the same hold-back and admission as in memory mode (memory.py; Redis caps its own copy of each
stream by length), and what readers have had is told to it wherever they read.
Streams produced elsewhere are read from Redis:
waits with blocking XREADs on a few shared connections, whose entries then serve the readers
they woke (redis_follow.py), and ranges with XRANGE for whatever those did not bring. What
readers here have read is told to the producers (their backlog, and "a reader is here") by a
background task, in one pipeline for every stream, never on a reader's path.

A reader elsewhere learns that the producer died from its lease: when a wait brings nothing for
half a lease and the lease has lapsed without an end entry, the wait raises GenerationLostError.
Right after Redis returns, a producer may not have restored its stream and lease yet, so for two
leases a missing stream or lease reads as "nothing yet" rather than "gone". A lease also lapses
when Redis refuses the producer's writes (full, a replica): the check that finds it lapsed makes a
write too, and one Redis refuses there is an outage here, not a producer gone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog

from ..settings import BrowserSettings
from ..shared.link import PING_INTERVAL, UNREACHABLE, RedisLink
from .memory import MemoryStreamStore
from .redis_follow import Entry, Follower
from .redis_keys import END, EVENT, StreamKeys, entry_id, entry_seq
from .redis_write import RedisWriter
from .store import EventsDroppedError, GenerationLostError, Slice, StoredEvent, StoreUnavailableError

log = structlog.get_logger("sluice.streams")

# Seconds a stop request waits for the producer elsewhere to store the stream's end.
STOP_WAIT = 5.0
# Most seconds between two reports of the streams read here to their producers: off the readers'
# path, one pipeline for all of them (a reader that paid a round trip for it each second was the p99).
REPORT_INTERVAL = 1.0
# The longest pause before subscribing again after the stop listener failed for a bug.
LISTEN_BACKOFF_MAX = 5.0


class RedisStreamStore:
    """StreamStore shared through Redis; this instance's own streams also in memory."""

    def __init__(self, link: RedisLink, bounds: BrowserSettings, *, max_bytes: int = 4 << 20) -> None:
        self._link = link
        self._keys = StreamKeys(link.prefix)
        self._lease = link.settings.lease_seconds
        self._grace_ms = max(1, int(bounds.reader_grace_seconds * 1000))
        # Twice per grace period at least, so a reader's report never lapses while it reads.
        self._report_every = max(0.05, min(REPORT_INTERVAL, bounds.reader_grace_seconds / 2))
        self._local = MemoryStreamStore(
            max_events=bounds.max_buffered_events,
            max_streams=bounds.max_streams,
            retention=bounds.retention_seconds,
            max_bytes=max_bytes,
            max_kept_bytes=bounds.max_kept_bytes,
            on_drop=self._dropped_locally,
        )
        self._writer = RedisWriter(link, self._keys, self._local, max_events=bounds.max_buffered_events)
        # Entries kept per stream for woken readers: no more than Redis keeps (a resume before is a 410).
        keep = min(256, bounds.max_buffered_events + 1)
        self._follower = Follower(link, self._keys, link.settings.reader_connections, keep=keep)
        self._stop_handler: Callable[[str], None] | None = None
        self._subscriber: asyncio.Task[None] | None = None
        # Set while subscribed to stop requests (a request published before is not heard).
        self.listening = asyncio.Event()
        self._settle_until = 0.0
        # Streams produced elsewhere and read here since the last report, and how far (see _report_forever).
        self._reads: dict[str, int] = {}
        self._report_due = asyncio.Event()
        self._reporter: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._writer.start()
        self._follower.start()
        self._subscriber = asyncio.create_task(self._listen_for_stops(), name="sluice-redis-stops")
        self._reporter = asyncio.create_task(self._report_forever(), name="sluice-redis-reads")

    async def create(self, stream_id: str, owner: str = "") -> bool:
        if not self._link.up:
            raise StoreUnavailableError("Redis is unreachable")
        if not await self._local.create(stream_id, owner):
            return False
        try:
            await self._writer.open(stream_id, owner)
        except UNREACHABLE as exc:
            self._link.failed(exc)
            self._local.discard(stream_id)
            raise StoreUnavailableError("Redis is unreachable") from None
        return True

    async def append(self, stream_id: str, event: StoredEvent) -> None:
        await self._local.append(stream_id, event)
        self._writer.add(stream_id, event)

    async def finish(self, stream_id: str) -> None:
        # The end first: past the byte budget the local copy may go as it finishes, and Redis must still get it.
        self._writer.finish(stream_id)
        await self._local.finish(stream_id)

    async def owner(self, stream_id: str) -> str | None:
        if stream_id in self._local:
            return await self._local.owner(stream_id)
        try:
            owner = await self._link.client.get(self._keys.owner(stream_id))
        except UNREACHABLE as exc:
            self._link.failed(exc)
            raise StoreUnavailableError("Redis is unreachable") from None
        # No record: no such stream (every stream gets one, "" when no key started it).
        return owner.decode() if isinstance(owner, bytes) else owner

    async def read_after(self, stream_id: str, seq: int, limit: int) -> Slice | None:
        if stream_id in self._local:
            return await self._local.read_after(stream_id, seq, limit)
        # That a reader is here, not how far: `seq` may be a resuming client's claim, and one past
        # the end would tell the producer that every event was read (`reader_sent` says how far).
        self._note_read(stream_id, 0)
        return await self._range(stream_id, seq, limit)

    async def peek(self, stream_id: str, seq: int) -> Slice | None:
        if stream_id in self._local:
            return await self._local.peek(stream_id, seq)
        return await self._range(stream_id, seq, 1)  # no reader is noted: a look is not a read

    async def _range(self, stream_id: str, seq: int, limit: int) -> Slice | None:
        """At most `limit` events after `seq` of a stream produced elsewhere, from Redis (or what woke a reader)."""
        key = self._keys.events(stream_id)
        if brought := self._follower.recent(key, seq, limit):
            return _slice(stream_id, seq, brought, limit)  # what woke this reader: no second round trip
        pipe = self._link.client.pipeline(transaction=False)
        pipe.xrange(key, min="(" + entry_id(seq), max="+", count=limit + 1)
        try:
            entries, *_ = await pipe.execute()
            if entries:
                return _slice(stream_id, seq, [_entry(*entry) for entry in entries], limit)
            # Nothing after `seq`: caught up, past the end, or is there no such stream?
            pipe.xrevrange(key, max="+", min="-", count=1)
            pipe.exists(self._keys.lease(stream_id))
            last, leased = await pipe.execute()
        except UNREACHABLE as exc:
            self._link.failed(exc)
            raise StoreUnavailableError("Redis is unreachable") from None
        if not last:
            # Leased but empty: started, nothing written yet (or being restored after an outage).
            return Slice((), finished=False) if leased or self._settling() else None
        # Ended at or before `seq`, a resume point past the final event: nothing follows, as in memory
        # (read as live, the reader got heartbeats until retention). An end after `seq + 1` came
        # since the XRANGE, with events before it: read again.
        end_id, fields = last[0]
        return Slice((), finished=END in fields and entry_seq(end_id) <= seq + 1)

    async def wait(self, stream_id: str, seq: int) -> None:
        if stream_id in self._local:
            await self._local.wait(stream_id, seq)
            return
        if not self._link.up:
            raise StoreUnavailableError("Redis is unreachable")
        key = self._keys.events(stream_id)
        if await self._follower.wait(key, seq, within=self._lease / 2):
            return
        # Nothing for half a lease: is anyone still producing it? And can they (see the module's doc)?
        pipe = self._link.client.pipeline(transaction=False)
        pipe.exists(self._keys.lease(stream_id))
        pipe.xrevrange(key, max="+", min="-", count=1)
        self._link.probe_in(pipe)
        try:
            leased, last, _ = await pipe.execute()
        except UNREACHABLE as exc:
            self._link.failed(exc)
            raise StoreUnavailableError("Redis is unreachable") from None
        ended = bool(last) and END in last[0][1]
        if not leased and not ended and last and not self._settling():
            raise GenerationLostError(f"the producer of {stream_id!r} stopped renewing its lease")

    @property
    def kept_bytes(self) -> int:
        return self._local.kept_bytes

    # The byte budget bounds this instance's memory: its own streams, kept locally (Redis caps its copy by length).

    def has_room(self, stream_id: str) -> bool:
        return self._local.has_room(stream_id)

    async def wait_for_room(self, stream_id: str) -> None:
        await self._local.wait_for_room(stream_id)

    def mark_read(self, stream_id: str, seq: int) -> None:
        self._local.mark_read(stream_id, seq)

    async def stop_elsewhere(self, stream_id: str) -> None:
        key = self._keys.events(stream_id)
        try:
            await self._link.client.publish(self._keys.stop_channel, stream_id)
            async with asyncio.timeout(STOP_WAIT):
                while True:
                    last: Any = await self._link.client.xrevrange(key, max="+", min="-", count=1)
                    if not last or END in last[0][1]:
                        return
                    await self._follower.wait(key, entry_seq(last[0][0]), within=self._lease)
        except TimeoutError:  # first: the builtin TimeoutError is an OSError, one of UNREACHABLE
            log.warning("browser_stream_stop_unconfirmed", stream_id=stream_id)
        except UNREACHABLE as exc:
            self._link.failed(exc)
            raise StoreUnavailableError("Redis is unreachable") from None

    def on_stop_request(self, handler: Callable[[str], None]) -> None:
        self._stop_handler = handler

    def read_elsewhere(self, stream_id: str) -> bool:
        return stream_id in self._writer.read_elsewhere

    def on_read_elsewhere(self, handler: Callable[[str, int], None]) -> None:
        self._writer.on_read_elsewhere = handler

    async def recovered(self) -> bool:
        if await self._link.wait_up(self._link.settings.outage_seconds):
            self._settle_until = asyncio.get_running_loop().time() + 2 * self._lease
            return True
        return False

    async def close(self) -> None:
        await self._writer.close()
        for task in (self._subscriber, self._reporter):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self._follower.close()
        await self._local.close()

    def _dropped_locally(self, stream_id: str) -> None:
        self._writer.forget(stream_id)

    def _settling(self) -> bool:
        return asyncio.get_running_loop().time() < self._settle_until

    def reader_sent(self, stream_id: str, seq: int) -> None:
        if stream_id not in self._local:
            self._note_read(stream_id, seq)

    def _note_read(self, stream_id: str, seq: int) -> None:
        """Note that a reader here has the events up to `seq`, for the reporter to tell the producer."""
        reads = self._reads
        if stream_id not in reads:
            reads[stream_id] = seq
            self._report_due.set()
        elif seq > reads[stream_id]:
            reads[stream_id] = seq

    async def _report_forever(self) -> None:
        """Tell producers elsewhere which of their streams are read here, and how far, every so often."""
        while True:
            await self._report_due.wait()
            self._report_due.clear()
            reads, self._reads = self._reads, {}
            pipe = self._link.client.pipeline(transaction=False)
            for stream_id, seq in reads.items():
                # The producer counts it as read (its backlog) and as a reader while the key lives.
                pipe.set(self._keys.read(stream_id), seq, px=self._grace_ms)
            try:
                await pipe.execute()
            except UNREACHABLE as exc:
                self._link.failed(exc)  # the readers learn it from their own reads
            except Exception:
                log.exception("redis_report_failed")  # a bug: said, and the next report goes on
            await asyncio.sleep(self._report_every)  # the reports' own clock, not a synchronisation

    async def _listen_for_stops(self) -> None:
        client = self._link.dedicated(read_timeout=None)
        pause = PING_INTERVAL
        try:
            while True:
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                try:
                    await pubsub.subscribe(self._keys.stop_channel)
                    self.listening.set()
                    async for message in pubsub.listen():
                        if message["type"] == "message" and self._stop_handler is not None:
                            self._stop_handler(message["data"].decode())
                except UNREACHABLE as exc:
                    self.listening.clear()
                    self._link.failed(exc)
                    await self._link.wait_up(float("inf"))
                except Exception:
                    # A bug (or an ACL refusing SUBSCRIBE): said, and subscribed again at a slowing pace.
                    self.listening.clear()
                    log.exception("redis_stop_listener_failed")
                    await asyncio.sleep(pause)  # a retry pace, not a synchronisation
                    pause = min(LISTEN_BACKOFF_MAX, pause * 2)
                finally:
                    with contextlib.suppress(*UNREACHABLE):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        finally:
            await client.aclose()


def _entry(entry_id: bytes, fields: dict[bytes, bytes]) -> Entry:
    """An XRANGE entry as the follower keeps one: its sequence number and event (None: the end)."""
    return entry_seq(entry_id), None if END in fields else fields[EVENT]


def _slice(stream_id: str, seq: int, entries: list[Entry], limit: int) -> Slice:
    """The events of the entries after `seq`, with `finished` when the end entry is among them."""
    if entries and entries[0][0] != seq + 1:
        raise EventsDroppedError(f"events after {seq} of {stream_id!r} were dropped")
    events: list[StoredEvent] = []
    for at, data in entries:
        if data is None:
            return Slice(tuple(events), finished=True)
        if len(events) == limit:
            break
        events.append(StoredEvent(at, data))
    return Slice(tuple(events), finished=False)
