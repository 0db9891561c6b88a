"""Start, stop and own the detached generations of one application, and count who reads them.

Every generation runs as a task held here, never fire-and-forget: `close()` (on application
cleanup, see contexts.py) ends each one with the shutdown event, waits for it, and cancels what still runs. A
generation with no reader attached for the grace period is stopped, so a browser that went away
for good does not keep an upstream busy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog

from ..errors import ServiceUnavailableError
from ..lifecycle import FINAL_EVENT_GRACE
from ..settings import BrowserSettings
from .generation import Generation, Job, Services, StopReason
from .resume import new_stream_id
from .store import StoreUnavailableError, StreamStore

if TYPE_CHECKING:
    from ..auth.gate import Lease

log = structlog.get_logger("sluice.streams")

# Most bytes of events one upstream read can add at once, with a wide margin: the upstream client
# reads 16 KiB at a time (upstreams/http1.py READ_BUFFER_BYTES).
READ_SLACK = 1 << 20


@dataclass(slots=True, eq=False)
class _Live:
    """A running generation, its task, and the connections reading it now."""

    generation: Generation
    task: asyncio.Task[None]
    readers: int = 0
    grace: asyncio.TimerHandle | None = None


class StreamRegistry:
    """The detached streams of this process."""

    def __init__(self, services: Services, bounds: BrowserSettings, id_prefix: str = "") -> None:
        self._services = services
        self._id_prefix = id_prefix
        self._grace = bounds.reader_grace_seconds
        self._live: dict[str, _Live] = {}
        services.store.on_stop_request(self.stop_requested)
        services.store.on_read_elsewhere(self.sent)

    @property
    def store(self) -> StreamStore:
        """Where the streams' events are kept."""
        return self._services.store

    @property
    def retry_after(self) -> int:
        """Seconds to suggest in Retry-After when a stream cannot be served now."""
        return self._services.settings.server.retry_after

    @property
    def live(self) -> int:
        """Generations running now."""
        return len(self._live)

    async def start(
        self,
        *,
        request_id: str,
        route: str,
        model: str,
        body: dict[str, Any],
        lease: Lease | None = None,
        owner: str = "",
        give_back_body: Callable[[], None] | None = None,
    ) -> str:
        """Start generating `body` into a new stream; its id. 503 while draining or when full.

        `owner` is who may read and stop it (see `may_access`): `TokenSigner.stream_owner` of the
        key that started it, "" without keys. `give_back_body` is called once the stream's task is
        done (only if this returns: the caller still holds the body when it raises).
        """
        services = self._services
        services.lifecycle.admit()
        stream_id = self._id_prefix + new_stream_id()
        retry_after = {"Retry-After": str(self.retry_after)}
        try:
            # The store keeps the owner with the stream, so every instance can check readers.
            created = await services.store.create(stream_id, owner)
        except StoreUnavailableError:
            raise ServiceUnavailableError(
                "Browser streams are unavailable while Sluice cannot reach Redis; retry shortly.",
                code="store_unavailable",
                headers=retry_after,
            ) from None
        if not created:
            raise ServiceUnavailableError(
                "Sluice holds as many streams as it may; retry shortly.", code="overloaded", headers=retry_after
            )
        allows = lease.key.fallbacks_allowed(services.settings.models.aliases) if lease is not None else None
        job = Job(stream_id, request_id, route, model, body, lease, allows, give_back_body)
        generation = Generation(job, services)
        task = asyncio.create_task(generation.run(), name=f"sluice-stream-{stream_id}")
        live = _Live(generation, task)
        self._live[stream_id] = live
        task.add_done_callback(partial(self._ended, stream_id))
        self._arm_grace(stream_id, live)
        return stream_id

    def readers(self, stream_id: str) -> int:
        """Connections reading `stream_id` here now (0 once its generation ended)."""
        live = self._live.get(stream_id)
        return live.readers if live is not None else 0

    @contextmanager
    def reading(self, stream_id: str) -> Iterator[None]:
        """Count a connection as reading `stream_id` while the block runs."""
        live = self._live.get(stream_id)
        if live is not None:
            live.readers += 1
            if live.grace is not None:
                live.grace.cancel()
                live.grace = None
        try:
            yield
        finally:
            if live is not None:
                live.readers -= 1
                if live.readers == 0 and self._live.get(stream_id) is live:
                    self._arm_grace(stream_id, live)

    async def may_access(self, stream_id: str, claimant: str) -> bool:
        """True when the key whose owner value is `claimant` may read or stop `stream_id`: it, or no key, started it.

        An owner value is the key's name and a keyed fingerprint of its hash (`TokenSigner.stream_owner`),
        so a key rotated under the same name is another owner. An unknown stream is refused too, so
        another key's stream answers exactly as an unknown one.

        A stream recorded before owners carried the fingerprint (the name alone, in Redis across an
        upgrade) matches no key: it is refused to every key, as an unknown one (204), rather than
        opened to whichever key has that name now; it is gone after its retention. A stream started
        without keys ("") stays open to every key.
        """
        owner = await self.store.owner(stream_id)
        return owner is not None and owner in ("", claimant)

    def sent(self, stream_id: str, seq: int) -> None:
        """A reader was sent the events up to `seq`: the generation, here or elsewhere, may read on if it held back."""
        live = self._live.get(stream_id)
        if live is not None:
            live.generation.backlog.sent(seq)
            self.store.mark_read(stream_id, seq)  # past the byte budget, what a reader had goes first
        else:
            self.store.reader_sent(stream_id, seq)

    async def stop(self, stream_id: str) -> None:
        """Stop the generation, here or on another instance; return once its end is stored."""
        live = self._live.get(stream_id)
        if live is None:
            try:
                await self.store.stop_elsewhere(stream_id)
            except StoreUnavailableError:
                raise ServiceUnavailableError(
                    "Sluice cannot reach Redis to stop the stream; retry shortly.",
                    code="store_unavailable",
                    headers={"Retry-After": str(self.retry_after)},
                ) from None
            return
        live.generation.stop(StopReason.CANCELLED)
        # wait(), not await: a caller that leaves must not cancel the generation's own cleanup.
        await asyncio.wait([live.task])

    def end_all(self) -> None:
        """End every generation now with the shutdown event; its readers then get it and finish."""
        for live in list(self._live.values()):
            live.generation.shutdown()

    async def close(self) -> None:
        """End every generation with the shutdown event, wait for them, then release the store."""
        tasks = [live.task for live in self._live.values()]
        self.end_all()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=FINAL_EVENT_GRACE)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._services.store.close()

    def _arm_grace(self, stream_id: str, live: _Live) -> None:
        loop = asyncio.get_running_loop()
        live.grace = loop.call_later(self._grace, self._abandoned, stream_id, live)

    def stop_requested(self, stream_id: str) -> None:
        """Another instance asked to stop `stream_id`: stop it if it runs here."""
        live = self._live.get(stream_id)
        if live is not None:
            live.generation.stop(StopReason.CANCELLED)

    def _abandoned(self, stream_id: str, live: _Live) -> None:
        if self.store.read_elsewhere(stream_id):
            self._arm_grace(stream_id, live)  # read through another instance: not abandoned
            return
        live.grace = None
        log.info("browser_stream_abandoned", stream_id=stream_id, grace_seconds=self._grace)
        live.generation.stop(StopReason.ABANDONED)

    def _ended(self, stream_id: str, task: asyncio.Task[None]) -> None:
        live = self._live.pop(stream_id, None)
        if live is not None:
            if live.grace is not None:
                live.grace.cancel()
            # Here, not in Generation.run: a task cancelled before its first step never runs it.
            give_back_body = live.generation.job.give_back_body
            if give_back_body is not None:
                give_back_body()
        if not task.cancelled() and task.exception() is not None:
            # Generation.run catches everything it can; anything else is a bug worth a loud line.
            log.error("browser_stream_task_failed", stream_id=stream_id, exc_info=task.exception())
