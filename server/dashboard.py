"""The live dashboard's numbers: samples of the app's metrics, and snapshots over a sliding window.

Everything comes from the same metric objects `/metrics` renders (summed across workers when they
share a metrics directory), so the page and Prometheus never disagree. A `Window` keeps one sample
per tick: rates and TTFT percentiles are over the window, counts of errors and disconnects since
start.

Every open feed shows the same snapshot: `DashboardFeeds` runs one producer for all of them (it
samples, builds the tables and frames the events once a tick), from the first viewer to the last,
and caps how many may watch. A viewer costs one write a tick, and nobody watching costs nothing.

Tables are the extension point: the page renders whatever `Table`s a snapshot carries, and
routes/dashboard.py lists the functions that build them from the app (TABLES): the upstreams with
their breakers, and each gateway key's usage against its limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import defaultdict, deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import orjson
import structlog

from .auth.limits import KeyLimits, Usage
from .errors import ServiceUnavailableError
from .guard import Outcome
from .metrics import Metrics

log = structlog.get_logger("sluice.dashboard")

Cell = str | int | float | None


@dataclass(frozen=True, slots=True)
class Sample:
    """The counters that matter to the dashboard at one instant (loop time `at`)."""

    at: float
    requests: float = 0.0
    live_streams: float = 0.0
    completion_tokens: float = 0.0
    # (upper bound, cumulative count), every route summed, in increasing bound order.
    ttft_buckets: tuple[tuple[float, float], ...] = ()
    errors_by_code: dict[str, float] = field(default_factory=dict)
    errors_by_status: dict[str, float] = field(default_factory=dict)
    endings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Table:
    """A titled table the page renders as it is: `rows` hold one cell per column."""

    id: str
    title: str
    columns: tuple[str, ...]
    rows: list[tuple[Cell, ...]]


def take_sample(metrics: Metrics, at: float) -> Sample:
    """Read the dashboard's counters from the metric families."""
    requests = live = tokens = 0.0
    buckets: dict[float, float] = defaultdict(float)
    by_code: dict[str, float] = defaultdict(float)
    by_status: dict[str, float] = defaultdict(float)
    endings: dict[str, float] = defaultdict(float)
    for family in metrics.collect():
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "sluice_requests_total":
                requests += value
                if labels["status"] >= "400":  # three digits: text order is numeric order
                    by_status[labels["status"]] += value
            elif name == "sluice_live_streams":
                live += value
            elif name == "sluice_tokens_total" and labels["kind"] == "completion":
                tokens += value
            elif name == "sluice_time_to_first_token_seconds_bucket":
                buckets[float(labels["le"])] += value
            elif name == "sluice_upstream_errors_total":
                by_code[labels["code"]] += value
            elif name == "sluice_stream_endings_total":
                endings[labels["outcome"]] += value
    return Sample(
        at=at,
        requests=requests,
        live_streams=live,
        completion_tokens=tokens,
        ttft_buckets=tuple(sorted(buckets.items())),
        errors_by_code=dict(by_code),
        errors_by_status=dict(by_status),
        endings=dict(endings),
    )


def quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The q-quantile of cumulative histogram buckets, interpolated as Prometheus' histogram_quantile."""
    ordered = sorted(buckets)
    finite = [(bound, count) for bound, count in ordered if not math.isinf(bound)]
    total = ordered[-1][1] if ordered else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in finite:
        if count >= rank:
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    # In the +Inf bucket: like Prometheus, answer the highest finite bound.
    return finite[-1][0] if finite else None


class Window:
    """The last `seconds` of samples, and the snapshot the page shows."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._samples: deque[Sample] = deque()

    def add(self, sample: Sample) -> None:
        """Keep `sample`, dropping those older than the window (always keeping one to compare with)."""
        self._samples.append(sample)
        while len(self._samples) > 2 and sample.at - self._samples[1].at >= self.seconds:
            self._samples.popleft()

    def snapshot(self, tables: Iterable[Table] = ()) -> dict[str, Any]:
        """Rates and percentiles over the window, totals since start, and the tables."""
        newest = self._samples[-1]
        oldest = self._samples[0]
        elapsed = newest.at - oldest.at
        ttft = _bucket_delta(oldest.ttft_buckets, newest.ttft_buckets)
        p50, p99 = quantile(0.5, ttft), quantile(0.99, ttft)
        return {
            "window_seconds": round(elapsed, 3),
            "live_streams": int(newest.live_streams),
            "requests_total": int(newest.requests),
            "requests_per_second": _rate(newest.requests - oldest.requests, elapsed),
            "tokens_per_second": _rate(newest.completion_tokens - oldest.completion_tokens, elapsed),
            "ttft_ms": {"p50": _ms(p50), "p99": _ms(p99)},
            "errors_by_code": _counts(newest.errors_by_code),
            "errors_by_status": _counts(newest.errors_by_status),
            "disconnects": int(newest.endings.get(Outcome.CLIENT_DISCONNECTED, 0)),
            "endings": _counts(newest.endings),
            "tables": [asdict(table) for table in tables],
        }


@dataclass(frozen=True, slots=True)
class Frames:
    """One snapshot as the feed's SSE event, framed once for every viewer.

    `first` is what a viewer gets first: the same event with the reconnection delay (`retry:`).
    """

    first: bytes
    later: bytes


def frame(snapshot: dict[str, Any], retry_ms: int) -> Frames:
    """`snapshot` as a `snapshot` event, byte for byte what aiohttp-sse's `send` writes with `sep="\\n"`.

    JSON escapes every line break, so the data is always one line.
    """
    event = b"event: snapshot\ndata: " + orjson.dumps(snapshot) + b"\n"
    return Frames(first=event + b"retry: %d\n\n" % retry_ms, later=event + b"\n")


# Runs until the process drains (or fails), handing each tick's frames to the callable it is given.
Producer = Callable[[Callable[[Frames], None]], Coroutine[Any, Any, None]]


class DashboardFeeds:
    """The open dashboard feeds: one producer of frames for all of them, and a cap on how many.

    The producer starts with the first viewer and is cancelled when the last one leaves. A viewer
    reads only the newest frames: one that reads slowly skips what it missed, and never holds the
    producer or another viewer back.
    """

    def __init__(self, produce: Producer, *, max_viewers: int, retry_after: int) -> None:
        self._produce = produce
        self._max_viewers = max_viewers
        self._retry_after = retry_after
        self._viewers = 0
        self._task: asyncio.Task[None] | None = None
        self._latest: Frames | None = None
        self._version = 0  # of `_latest`: counts every frames published, never goes back
        self._changed = asyncio.Event()

    @property
    def viewers(self) -> int:
        """Feeds open now."""
        return self._viewers

    def join(self) -> Viewer:
        """A place for one more viewer, starting the producer for the first; 503 with Retry-After when full."""
        if self._viewers >= self._max_viewers:
            raise ServiceUnavailableError(
                "Sluice serves as many dashboard feeds as it may; retry shortly.",
                code="overloaded",
                headers={"Retry-After": str(self._retry_after)},
            )
        self._viewers += 1
        if self._task is None or self._task.done():  # none yet, or one that failed
            self._task = asyncio.create_task(self._produce(self._publish), name="sluice-dashboard-feeds")
            self._task.add_done_callback(self._ended)
        return Viewer(self)

    async def newer(self, seen: int, ended: Callable[[], bool] = lambda: False) -> tuple[int, Frames] | None:
        """The newest frames and their version, once newer than version `seen`; None once the producer
        ended, or `ended()` says the viewer's feed is over."""
        while self._latest is None or self._version == seen:
            if self._task is None or self._task.done() or ended():
                return None
            await self._changed.wait()
        return self._version, self._latest

    async def close(self) -> None:
        """Stop the producer, if it runs: the application is closing."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _leave(self) -> None:
        self._viewers -= 1
        if self._viewers == 0 and self._task is not None:
            # Nobody watches: sampling on would cost for nothing, and the next viewer starts a fresh window.
            self._task.cancel()
            self._task = None
            self._latest = None

    def _publish(self, frames: Frames) -> None:
        if asyncio.current_task() is not self._task:
            return  # a producer stopped since (the last viewer left) and not yet unwound
        self._latest = frames
        self._version += 1
        self._wake()

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("dashboard_feed_failed", exc_info=error)
        self._wake()  # the viewers of the producer that ended end too (`newer` answers None)

    def _wake(self) -> None:
        # A new event for the next wait: the set one wakes every viewer waiting now, once.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


class Viewer:
    """One open feed's place among `DashboardFeeds`: its frames, newest first; leaving frees the place."""

    def __init__(self, feeds: DashboardFeeds) -> None:
        self._feeds = feeds
        self._seen = 0
        self._left = False
        self._revoked = False

    def __aiter__(self) -> Viewer:
        return self

    async def __anext__(self) -> Frames:
        newer = await self._feeds.newer(self._seen, lambda: self._revoked)
        if newer is None:
            raise StopAsyncIteration
        self._seen, frames = newer
        return frames

    def revoke(self) -> None:
        """The metrics key changed (a reload, KeyRing.hold_metrics): the feed ends at its next wake, now."""
        self._revoked = True
        self._feeds._wake()

    def leave(self) -> None:
        """Free this viewer's place (once; again does nothing)."""
        if not self._left:
            self._left = True
            self._feeds._leave()

    def __enter__(self) -> Viewer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.leave()


@dataclass(frozen=True, slots=True)
class UpstreamState:
    """What the dashboard shows of one upstream: its breaker and its requests in flight."""

    name: str
    url: str
    breaker: str
    in_flight: int
    max_concurrency: int


def upstream_table(upstreams: Iterable[UpstreamState]) -> Table:
    """Each upstream with its address (never a credential), breaker state and load."""
    return Table(
        id="upstreams",
        title="Upstreams",
        columns=("name", "address", "state", "in flight", "concurrency cap"),
        rows=[(u.name, _address(u.url), u.breaker, u.in_flight, u.max_concurrency or None) for u in upstreams],
    )


@dataclass(frozen=True, slots=True)
class KeyState:
    """What the dashboard shows of one gateway key: its name, limits and use (None: unknown now)."""

    name: str
    limits: KeyLimits
    usage: Usage | None


def key_table(keys: Iterable[KeyState]) -> Table:
    """Each gateway key by name (never the key or its hash) with its use against its limits."""
    return Table(
        id="keys",
        title="Gateway keys",
        columns=("key", "streams", "requests this minute", "tokens this minute"),
        rows=[_key_row(k) for k in keys],
    )


NO_LIMIT = "no limit"


def _key_row(key: KeyState) -> tuple[Cell, ...]:
    usage, limits = key.usage, key.limits
    return (
        key.name,
        _against(None if usage is None else usage.streams, limits.max_streams),
        _against(None if usage is None else usage.requests, limits.rpm) if limits.rpm else NO_LIMIT,
        _against(None if usage is None else usage.tokens, limits.tpm) if limits.tpm else NO_LIMIT,
    )


def _against(used: int | None, limit: int) -> str:
    # Requests and tokens are only counted under a limit (the caller shows "no limit" alone);
    # streams always are.
    return f"{'unknown' if used is None else used} / {limit or NO_LIMIT}"


def _address(url: str) -> str:
    # Scheme, host, port and path only: no userinfo or query string, where a credential could hide.
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _bucket_delta(
    before: tuple[tuple[float, float], ...], after: tuple[tuple[float, float], ...]
) -> list[tuple[float, float]]:
    earlier = dict(before)
    return [(bound, count - earlier.get(bound, 0.0)) for bound, count in after]


def _rate(delta: float, seconds: float) -> float:
    return round(delta / seconds, 2) if seconds > 0 else 0.0


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _counts(values: dict[str, float]) -> dict[str, int]:
    return {key: int(value) for key, value in sorted(values.items()) if value}
