"""Prometheus metrics: one registry per application, aggregated across workers when they share one.

With `PROMETHEUS_MULTIPROC_DIR` set (the `--workers N` supervisor sets it; server/settings/ reads it into
`settings.process.metrics_dir`), prometheus-client writes every value to a per-process file and
`/metrics` sums the files of all workers. A gauge tells what is true now, so its multi-process mode
is a "live" one: the supervisor marks a dead worker's files gone, and its values go with them.
Counters and histograms keep a dead worker's counts: those did happen.

Label values are bounded: what a client sends never makes a series of its own. A `model` label is
a model the gateway knows by name (configured in `models.available`, the default, an alias's
target, a fallback, or one discovery found: `ModelCatalog.knows`); any other name, which
`models.available = ["*"]` lets through, is counted as `other`, as is a `method` that is not one
of HTTP's. An error `code` may be an upstream's own: the first 100 met keep their names, later
ones are `other`. Routes are the application's, keys are configured, statuses three digits.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from typing import Any, NamedTuple

from aiohttp import hdrs
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from .access import RequestRecord
from .catalog import ModelCatalog
from .guard import Expiry, Outcome
from .settings import RoutingSettings

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
GAP_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 15, 60)
# The label value a client's (or an upstream's) value out of bounds is counted under.
OTHER = "other"
# The model label of a chat request with no model recorded.
NO_MODEL = "unknown"
# aiohttp's C parser takes only llhttp's methods, its pure-Python one any token (AIOHTTP_NO_EXTENSIONS).
METHODS = frozenset(hdrs.METH_ALL)
# Sluice's own codes are some 50; an upstream's error body may name any (failures.py passes it on).
MAX_ERROR_CODES = 100

Labels = tuple[str, ...]


class Metrics:
    """The gateway's metrics, registered in a registry of its own (no global state).

    `models` (the catalog) and `routing` (its fallbacks) tell the names a `model` label may have:
    `Metrics()` alone counts every model as `other`.
    """

    def __init__(
        self,
        multiprocess_dir: str | None = None,
        models: ModelCatalog | None = None,
        routing: RoutingSettings | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._multiprocess_dir = multiprocess_dir
        r = self.registry
        self.requests = Counter(
            "sluice_requests", "HTTP requests by route, method and status.", ["route", "method", "status"], registry=r
        )
        self.live_streams = Gauge(
            "sluice_live_streams", "Chat requests being served now.", registry=r, multiprocess_mode="livesum"
        )
        self.ttft = Histogram(
            "sluice_time_to_first_token_seconds",
            "Time from a chat request's arrival to its first token written.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.chunk_gap = Histogram(
            "sluice_chunk_gap_seconds", "Time between two relayed chunks.", ["route"], buckets=GAP_BUCKETS, registry=r
        )
        self.stream_endings = Counter(
            "sluice_stream_endings", "Chat requests by how they ended.", ["route", "outcome"], registry=r
        )
        self.upstream_duration = Histogram(
            "sluice_upstream_request_duration_seconds",
            "Duration of chat requests that reached an upstream, from their arrival to their end.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "sluice_upstream_errors", "Upstream failures by the status Sluice answered.", ["status", "code"], registry=r
        )
        self.tokens = Counter(
            "sluice_tokens", "Tokens by model and kind (prompt, completion).", ["model", "kind"], registry=r
        )
        self.key_requests = Counter(
            "sluice_key_requests", "Requests by gateway key name and status.", ["key", "status"], registry=r
        )
        self.rate_limited = Counter(
            "sluice_rate_limited", "Requests refused by a gateway key's limit.", ["key", "limit"], registry=r
        )
        self.malformed_chunks = Counter(
            "sluice_upstream_chunks_malformed",
            "Upstream stream events that were not JSON objects, dropped.",
            ["route"],
            registry=r,
        )
        self.heartbeats = Counter("sluice_heartbeats", "Heartbeat comments sent on idle streams.", registry=r)
        self.log_lines_dropped = Counter(
            "sluice_log_lines_dropped",
            "Log lines that could not be written (stdout's reader gone, or stalled with 4,096 lines waiting).",
            registry=r,
        )
        self.attempts = Counter(
            "sluice_upstream_attempts", "Upstream attempts by upstream and result.", ["upstream", "result"], registry=r
        )
        self.retries = Counter(
            "sluice_upstream_retries", "Upstream retries by the failure retried.", ["reason"], registry=r
        )
        self.fallbacks = Counter("sluice_fallbacks", "Fallbacks to another model, by cause.", ["reason"], registry=r)
        self.hedges = Counter("sluice_hedges", "Hedged attempts started.", registry=r)
        self.continuations = Counter(
            "sluice_continuations", "Continuations after a mid-stream cut, by result.", ["result"], registry=r
        )
        self.breaker_state = Gauge(
            "sluice_upstream_breaker_state",
            "Each upstream's breaker: 0 closed, 1 half-open, 2 open.",
            ["upstream"],
            registry=r,
            # The worst state among live workers: "live", so a dead worker's values go with it
            # (mark_process_dead); a worker killed with a breaker open would else show it open for good.
            multiprocess_mode="livemax",
        )
        self._children: dict[tuple[int, Labels], Any] = {}
        self._models = models
        fallbacks = () if routing is None else (*routing.fallbacks.items(), *routing.context_window_fallbacks.items())
        self._fallback_models = frozenset(name for model, then in fallbacks for name in (model, *then))
        self._error_codes: set[str] = set()
        # The metrics with a label a client (or an upstream) chooses: each one's labels, bounded.
        # Applied where a child is made, so a request whose labels were met before pays nothing.
        self._bounds: dict[int, Callable[[Labels], Labels]] = {
            id(self.requests): _bound_method,
            id(self.tokens): self._bound_model,
            id(self.upstream_errors): self._bound_code,
        }
        # Routes and outcomes are few: one entry per pair met.
        self._endings: dict[tuple[str, int], _Ending] = {}
        # Each route's gap histogram and its bounds, found once: a stream's tally starts from them.
        self._gap_children: dict[str, tuple[Any, tuple[float, ...]]] = {}

    def child(self, metric: MetricWrapperBase, *labels: str) -> Any:
        """`metric.labels(*labels)`, remembered: looking a child up costs ~4 us, a dict hit ~0.1 us."""
        key = (id(metric), labels)  # the metrics live as long as this object: ids stay unique
        found = self._children.get(key)
        if found is None:
            found = self._new_child(metric, key, labels)
        return found

    def _new_child(self, metric: MetricWrapperBase, key: tuple[int, Labels], labels: Labels) -> Any:
        """The child for labels met for the first time, or the one their bounded labels count in.

        Labels out of bounds are not remembered as they came: the cache holds only labels /metrics
        shows, and a name that becomes known (discovered) gets its own series from then on.
        """
        bound = self._bounds.get(key[0])
        if bound is not None:
            bounded = bound(labels)
            if bounded != labels:
                return self.child(metric, *bounded)
        found = self._children[key] = metric.labels(*labels)
        return found

    def _bound_model(self, labels: Labels) -> Labels:
        """`sluice_tokens`' (model, kind): a model the gateway does not know by name is `other`."""
        model = labels[0]
        if model in (OTHER, NO_MODEL) or model in self._fallback_models:
            return labels
        if self._models is not None and self._models.knows(model):
            return labels
        return (OTHER, *labels[1:])

    def _bound_code(self, labels: Labels) -> Labels:
        """`sluice_upstream_errors`' (status, code): codes past the first MAX_ERROR_CODES are `other`."""
        codes = self._error_codes
        code = labels[1]
        if code in codes or code == OTHER:
            return labels
        if len(codes) < MAX_ERROR_CODES:
            codes.add(code)
            return labels
        return (labels[0], OTHER)

    def gaps(self, route: str) -> GapTally:
        """A new stream's tally of the gaps between its chunks, for `sluice_chunk_gap_seconds`."""
        found = self._gap_children.get(route)
        if found is None:
            child = self.child(self.chunk_gap, route)
            found = self._gap_children[route] = (child, tuple(child._upper_bounds))
        return GapTally(*found)

    def chat_finished(self, record: RequestRecord, duration: float, status: int) -> None:
        """Record what one chat request did, once, when it ends."""
        route = record.route
        outcome = record.outcome
        ending = self._ending(route, outcome)
        if ending.outcome is not None:
            count(ending.outcome)
        if outcome is _UPSTREAM_ERROR or (outcome is _TIMEOUT and record.error_code != _SEND):
            # status is what the client got: an error status, or 200 for a stream that failed mid-way.
            count(self.child(self.upstream_errors, str(status), record.error_code or "unknown"))
        if record.malformed_chunks:
            count(self.child(self.malformed_chunks, route), record.malformed_chunks)
        ttft_ms = record.ttft_ms()
        if ttft_ms is not None:
            observe(ending.ttft, ttft_ms / 1000)
        if record.attempts:  # one refused before any upstream (503 overloaded, 429) tells nothing of them
            observe(ending.upstream_duration, duration)
        model = record.model or NO_MODEL
        usage = record.usage
        if usage is not None:
            prompt = usage.get("prompt_tokens")
            completion = usage.get("completion_tokens")
            if isinstance(prompt, int) and prompt >= 0:
                count(self.child(self.tokens, model, "prompt"), prompt)
            if isinstance(completion, int) and completion >= 0:
                count(self.child(self.tokens, model, "completion"), completion)
        elif record.chunks_relayed:
            count(self.child(self.tokens, model, "completion"), record.chunks_relayed)

    def _ending(self, route: str, outcome: Outcome | None) -> _Ending:
        """The children every chat request that ended this way counts in, found once.

        Keyed by the outcome's id: hashing an enum member is a Python-level call, hashing an int is not.
        """
        key = (route, id(outcome))
        found = self._endings.get(key)
        if found is None:
            found = self._endings[key] = _Ending(
                self.child(self.stream_endings, route, outcome) if outcome is not None else None,
                self.child(self.ttft, route),
                self.child(self.upstream_duration, route),
            )
        return found

    def redis_reachability(self) -> Callable[[bool], None]:
        """Register `sluice_redis_up` (only with Redis configured: without, it would read as down)
        and return what sets it, for the link's changes of state."""
        gauge = Gauge(
            "sluice_redis_up",
            "1 while this process reaches Redis and Redis takes its writes; 0 from a command that found it"
            " unreachable or refusing until its probe answers again.",
            registry=self.registry,
            # Down in any live worker is down: each worker has its own connections.
            multiprocess_mode="livemin",
        )
        gauge.set(1)
        return lambda up: gauge.set(1 if up else 0)

    def exposition(self) -> bytes:
        """The text exposition of this process, or of all workers in multi-process mode."""
        return generate_latest(self._source())

    def collect(self) -> list[Metric]:
        """The metric families `exposition()` renders, as objects (the dashboard reads these)."""
        return list(self._source().collect())

    def _source(self) -> CollectorRegistry:
        if self._multiprocess_dir:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self._multiprocess_dir)  # type: ignore[no-untyped-call]
            return registry
        return self.registry


def _bound_method(labels: Labels) -> Labels:
    """`sluice_requests`' (route, method, status): a method that is not one of HTTP's is `other`."""
    route, method, status = labels
    return labels if method in METHODS else (route, OTHER, status)


class _Ending(NamedTuple):
    """The children a chat request that ended one way on one route counts in (its tokens depend on usage)."""

    outcome: Any
    ttft: Any
    upstream_duration: Any


# Read once: an enum member looked up on its class costs ~85 ns on Python 3.11.
_UPSTREAM_ERROR, _TIMEOUT, _SEND = Outcome.UPSTREAM_ERROR, Outcome.TIMEOUT, Expiry.SEND


def count(child: Any, amount: float = 1) -> None:
    """`child.inc(amount)` for a labelled child (or an unlabelled metric) and an amount known not negative.

    prometheus-client's `inc` checks, on every call, that the metric has its label values, that
    the amount is not negative and whether an exemplar came: ~0.3 us where the add itself takes
    0.2. The children here always have their labels and the callers' amounts are counts. Same
    value and lock as `inc` (`_value`, as GapTally leans on the histogram's).
    """
    child._value.inc(amount)


def observe(child: Any, amount: float) -> None:
    """`child.observe(amount)` for a labelled histogram child: its sum, and the first bucket not below it.

    prometheus-client walks the buckets in Python after the same checks as `inc` (1.4 us); the
    bucket is the one `Histogram.observe` picks (`amount <= bound`), found by bisection.
    """
    child._sum.inc(amount)
    child._buckets[bisect_left(child._upper_bounds, amount)].inc(1)


class GapTally:
    """One stream's chunk gaps, counted here and added to its histogram in bulk.

    `Histogram.observe` takes two locks per call, and a paced stream observes a gap per event:
    here an observation is a bucket count in a list, and the histogram gets the counts and the sum
    once a second of gaps has gathered (so /metrics lags a long stream by about a second) and when
    the stream ends (`flush`). Same buckets and sum as observing each gap; it leans on
    prometheus-client's Histogram keeping a value per bucket (`_buckets`, `_sum`, `_upper_bounds`).
    """

    __slots__ = ("_bounds", "_counts", "_histogram", "_sum")

    FLUSH_AFTER = 1.0  # seconds of gaps

    def __init__(self, histogram: Histogram, bounds: tuple[float, ...] | None = None) -> None:
        """`bounds`: the histogram's upper bounds, when the caller has them as a tuple already."""
        self._histogram = histogram
        self._bounds: tuple[float, ...] = tuple(histogram._upper_bounds) if bounds is None else bounds
        # Made at the first gap: a stream of one token has none, and its tally nothing to flush.
        self._counts: list[int] | None = None
        self._sum = 0.0

    def observe(self, amount: float) -> None:
        """Count one gap (seconds) in its bucket: the first whose upper bound is not below it."""
        if self._counts is None:
            self._counts = [0] * len(self._bounds)
        self._counts[bisect_left(self._bounds, amount)] += 1
        self._sum += amount
        if self._sum >= self.FLUSH_AFTER:
            self.flush()

    def flush(self) -> None:
        """Add what was counted since the last flush to the histogram."""
        counts = self._counts
        if counts is None or (not self._sum and not any(counts)):
            return
        buckets = self._histogram._buckets
        for index, count in enumerate(counts):
            if count:
                buckets[index].inc(count)
                counts[index] = 0
        self._histogram._sum.inc(self._sum)
        self._sum = 0.0
