"""Turn one stream's chunk batches into the bytes the client gets, noting what its end needs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .access import RequestRecord
from .chunks import Chunk
from .dialects import Dialect
from .errors import UpstreamError, UpstreamProtocolError
from .upstreams.failures import event_failure

# Shared by every stream: CPython (3.10 on) makes a new object for each `frozenset()`.
NONE_FINISHED: frozenset[int] = frozenset()


class GapObserver(Protocol):
    """Records the time between two chunks (metrics.GapTally: a Prometheus histogram, in bulk)."""

    def observe(self, amount: float) -> None: ...

    def flush(self) -> None:
        """Publish what was observed; the stream is ending."""


class RelayEvents:
    """Turn batches into the bytes to write, noting on the record what the stream's end needs."""

    __slots__ = ("_dialect", "_gaps", "_last_at", "_record", "choices", "failure", "finished")

    def __init__(self, dialect: Dialect, record: RequestRecord, gaps: GapObserver, requested: int = 1) -> None:
        """`requested` is the request's `n`: the most choices the stream may have, not a count to wait for.

        Many upstreams ignore `n` (Ollama, many of OpenRouter's providers) and stream one choice:
        its finish and `[DONE]` are a whole answer. What must finish is every choice that appeared.
        """
        self._dialect = dialect
        self._record = record
        self._gaps = gaps
        self._last_at: float | None = None
        # One more than the highest choice index that appeared (choice 0 appears with the first).
        self.choices = 1
        # The choices that finished: one shared empty frozenset until one does (an empty set, or
        # a new empty frozenset, took 216 bytes of every live stream for what fills at its end).
        self.finished: frozenset[int] = NONE_FINISHED
        self.failure: UpstreamError | None = None

    def take_failure(self) -> UpstreamError:
        """The failure `encode` found, to raise; no longer kept here.

        Raised while kept, its traceback (a frame whose locals reach this object) would hold it
        in a cycle that only the collector frees, with the whole stream's objects.
        """
        failure, self.failure = self.failure, None
        assert failure is not None
        return failure

    def encode(self, batch: Sequence[Chunk], now: float) -> bytes | None:
        """The events of `batch` as one write (None: nothing to send); an error chunk sets `failure`."""
        record = self._record
        gap_observed = False
        events: list[bytes] = []
        for chunk in batch:
            if chunk.error is not None:
                self.failure = event_failure(chunk.error)
                break
            if chunk.usage is not None:
                record.usage = chunk.usage
            if chunk.finish_reason is not None:
                record.finish_reason = chunk.finish_reason
                self.finished = self.finished.union(chunk.finished_choices)
            if chunk.choices_seen > self.choices:
                self.choices = chunk.choices_seen
            data = self._dialect.chunk(chunk)
            if data is None:
                continue
            events.append(data)
            if chunk.has_delta or chunk.other_delta:
                record.chunks_relayed += 1
                if self._last_at is None:
                    record.first_token_at = now
                elif not gap_observed:
                    # One gap per read that carries tokens: tokens that arrived together have none.
                    self._gaps.observe(now - self._last_at)
                    gap_observed = True
                self._last_at = now
        if not events:
            return None
        # Chunks that arrived in one read go out in one write: none waits for another.
        return events[0] if len(events) == 1 else b"".join(events)

    def flush_gaps(self) -> None:
        """Publish the gaps observed so far (the stream is ending)."""
        self._gaps.flush()

    @property
    def complete(self) -> bool:
        """True once every choice that appeared has finished: the stream may end with its done event."""
        return self._record.finish_reason is not None and len(self.finished) >= self.choices

    def done(self) -> bytes:
        """The final event of a stream whose body ended; raise if it ended before finishing.

        Choices the upstream never started are not waited for (see __init__); one that started and
        did not finish is a cut.
        """
        reason = self._record.finish_reason
        if reason is None:
            raise UpstreamProtocolError("The upstream ended the stream before it finished.")
        if len(self.finished) < self.choices:
            raise UpstreamProtocolError(
                f"The upstream ended the stream after {len(self.finished)} of its {self.choices} choices finished."
            )
        return self._dialect.done(reason, self._record.usage)
