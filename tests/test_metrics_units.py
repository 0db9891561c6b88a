"""The metrics' own logic, on a Metrics object alone: the chunk-gap histogram fed in bulk."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from server.access import RequestRecord
from server.guard import Outcome
from server.metrics import GAP_BUCKETS, LATENCY_BUCKETS, Metrics, count, observe

ROUTE = "/v1/chat/completions"
ATTEMPT = {"upstream": "primary", "model": "gpt-4o", "status": 200, "ms": 5.0}


def gap_lines(exposition: bytes) -> dict[str, float]:
    """The chunk-gap histogram's bucket, count and sum samples, by name and labels, as /metrics shows them."""
    samples = {}
    for line in exposition.decode().splitlines():
        if line.startswith("sluice_chunk_gap_seconds_") and "_created" not in line:
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def observed_one_by_one(gaps: list[float]) -> dict[str, float]:
    """The same histogram fed by `Histogram.observe`, one gap at a time."""
    registry = CollectorRegistry()
    histogram = Histogram(
        "sluice_chunk_gap_seconds", "Time between chunks.", ["route"], buckets=GAP_BUCKETS, registry=registry
    )
    for gap in gaps:
        histogram.labels(ROUTE).observe(gap)
    return gap_lines(generate_latest(registry))


def test_gaps_tallied_per_stream_give_the_histogram_observing_each_gap_gives() -> None:
    """Bucket counts, count and sum in /metrics' text are those of observing every gap, flushed or not yet.

    Catches: a gap counted in the wrong bucket, or counts lost or doubled at a flush
    (server/metrics.py, `GapTally`).
    """
    rng = random.Random(14)
    # Bounds themselves (a gap equal to a bound is in that bound's bucket), and paced streams' gaps.
    gaps = [*GAP_BUCKETS, 0.0, 100.0] + [rng.choice((0.01, 0.1, 0.5)) * rng.uniform(0.5, 1.5) for _ in range(500)]
    metrics = Metrics()
    streams = [metrics.gaps(ROUTE) for _ in range(3)]
    for index, gap in enumerate(gaps):
        streams[index % 3].observe(gap)
    for stream in streams:
        stream.flush()
        stream.flush()  # a second flush adds nothing
    tallied, expected = gap_lines(metrics.exposition()), observed_one_by_one(gaps)
    assert len(expected) == len(GAP_BUCKETS) + 3  # the buckets, +Inf, count and sum
    assert tallied == pytest.approx(expected, rel=1e-12)  # the sum, added in another order


def test_a_long_stream_shows_its_gaps_in_metrics_before_it_ends() -> None:
    """Once a second of gaps gathered, they are in /metrics without waiting for the stream's end.

    Catches: gaps published only at the stream's end (server/metrics.py, `GapTally.observe`).
    """
    metrics = Metrics()
    stream = metrics.gaps(ROUTE)
    for _ in range(5):
        stream.observe(0.25)
    # The fourth gap made a second: those four are published, the fifth waits for the next.
    assert gap_lines(metrics.exposition())[f'sluice_chunk_gap_seconds_count{{route="{ROUTE}"}}'] == 4


def test_observe_and_count_give_the_text_prometheus_clients_own_observe_and_inc_give() -> None:
    """`metrics.observe` and `metrics.count`, which skip prometheus-client's per-call checks, render the same /metrics.

    Catches: a value put in the bucket above or below its own, the sum or a count not added
    (server/metrics.py, `observe`, `count`).
    """
    rng = random.Random(14)
    # Bounds themselves (a value equal to a bound is in that bound's bucket), 0, past the last bound.
    values = [*LATENCY_BUCKETS, 0.0, 500.0] + [rng.uniform(0.0, 3.0) ** 3 for _ in range(300)]
    lean, public = Metrics(), Metrics()
    for value in values:
        observe(lean.child(lean.ttft, ROUTE), value)
        public.child(public.ttft, ROUTE).observe(value)
        count(lean.child(lean.tokens, "m", "prompt"), 3)
        public.child(public.tokens, "m", "prompt").inc(3)

    def samples(metrics: Metrics) -> dict[str, float]:
        lines = metrics.exposition().decode().splitlines()
        wanted = ("sluice_time_to_first_token_seconds_", "sluice_tokens_total")
        return {
            name: float(value)
            for name, _, value in (line.rpartition(" ") for line in lines)
            if name.startswith(wanted) and "_created" not in name
        }

    assert len(samples(public)) == len(LATENCY_BUCKETS) + 4  # the buckets, +Inf, count, sum, tokens
    assert samples(lean) == samples(public)


def test_chat_endings_are_counted_by_route_and_outcome_each_apart() -> None:
    """Chat requests ending differently on one route, or alike on two routes, count in their own series.

    Catches: the children found once per kind of ending keyed by the route alone or the outcome
    alone (server/metrics.py, `Metrics._ending`).
    """
    metrics = Metrics()
    endings = [
        (ROUTE, Outcome.COMPLETED),
        (ROUTE, Outcome.COMPLETED),
        (ROUTE, Outcome.CLIENT_DISCONNECTED),
        ("/chat/stream", Outcome.COMPLETED),
    ]
    for route, outcome in endings:
        record = RequestRecord(started=0.0, route=route, outcome=outcome, stream=True, attempts=[ATTEMPT])
        metrics.chat_finished(record, 0.01, 200)
    lines = metrics.exposition().decode().splitlines()
    counted = {
        name: float(value)
        for name, _, value in (line.rpartition(" ") for line in lines)
        if name.startswith(("sluice_stream_endings_total", "sluice_upstream_request_duration_seconds_count"))
    }
    assert counted == {
        f'sluice_stream_endings_total{{outcome="completed",route="{ROUTE}"}}': 2.0,
        f'sluice_stream_endings_total{{outcome="client_disconnected",route="{ROUTE}"}}': 1.0,
        'sluice_stream_endings_total{outcome="completed",route="/chat/stream"}': 1.0,
        f'sluice_upstream_request_duration_seconds_count{{route="{ROUTE}"}}': 3.0,
        'sluice_upstream_request_duration_seconds_count{route="/chat/stream"}': 1.0,
    }


def test_a_chat_request_refused_before_any_upstream_is_not_timed_as_an_upstream_request() -> None:
    """Only requests that reached an upstream are in its duration histogram: refusals would pull it to 0.

    Catches: every chat request observed, 503 overloaded included (server/metrics.py, `chat_finished`).
    """
    metrics = Metrics()
    refused = RequestRecord(started=0.0, route=ROUTE, outcome=Outcome.UPSTREAM_ERROR, stream=False)
    served = RequestRecord(started=0.0, route=ROUTE, outcome=Outcome.COMPLETED, stream=False, attempts=[ATTEMPT])
    metrics.chat_finished(refused, 0.001, 503)
    metrics.chat_finished(served, 0.5, 200)
    lines = metrics.exposition().decode().splitlines()
    [timed] = [line for line in lines if line.startswith("sluice_upstream_request_duration_seconds_count")]
    assert timed == f'sluice_upstream_request_duration_seconds_count{{route="{ROUTE}"}} 1.0'
