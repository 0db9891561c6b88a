"""Metric labels a client chooses are bounded: a `python run.py` process with `models.available = ["*"]`.

With "*" the gateway forwards any model name, and the simulator (like llama.cpp's server) answers
any: each name a client made up was a `sluice_tokens_total` series, and a child remembered in the
gateway, for good. A model label is now a name the gateway knows, else `other`; a method not one of
HTTP's is `other` too. The in-process tests check what the process cannot show: the memory of
children, a model discovered later, an upstream's many error codes.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.access import RequestRecord
from server.catalog import ModelCatalog
from server.guard import Outcome
from server.metrics import MAX_ERROR_CODES, METHODS, OTHER, Metrics
from server.settings import ModelSettings
from tests.support.processes import Gateway, Simulator, start_gateway

CONFIGURED = "gpt-4o-mini"  # in models.available beside "*"; gpt-4o is config/test.toml's default
MESSAGES = [{"role": "user", "content": "hi\n#sim tokens=2"}]
ROUTE = "/v1/chat/completions"


@pytest.fixture(scope="module")
def gateway(simulator: Simulator) -> Iterator[Gateway]:
    with start_gateway(upstream=simulator, env={"SLUICE_MODELS_AVAILABLE": f"*,{CONFIGURED}"}) as gateway:
        yield gateway


def _made_up(rng: random.Random, count: int) -> list[str]:
    return [f"client-model-{rng.getrandbits(64):016x}" for _ in range(count)]


async def _chat(http: aiohttp.ClientSession, gateway: Gateway, model: str, *, stream: bool) -> None:
    body = {"model": model, "messages": MESSAGES, "stream": stream}
    async with http.post(gateway.url + ROUTE, json=body) as response:
        await response.read()
        assert response.status == 200, model


def _label_values(text: str, metric: str, label: str) -> dict[str, float]:
    """Each value of `label` among `metric`'s samples, with the sum of their values."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == metric:
                value = sample.labels[label]
                found[value] = found.get(value, 0.0) + sample.value
    return found


async def test_made_up_model_names_are_counted_as_other_and_a_configured_one_by_its_name(gateway: Gateway) -> None:
    """60 made-up names (streamed and not) make one `other` series per kind; the configured model keeps its own.

    Catches: the model label taken from the request as it came (server/metrics.py, `_bound_model`).
    """
    names = _made_up(random.Random(14), 60)
    async with aiohttp.ClientSession() as http:
        for number, name in enumerate(names):
            await _chat(http, gateway, name, stream=number % 2 == 0)
        await _chat(http, gateway, CONFIGURED, stream=True)
        await _chat(http, gateway, CONFIGURED, stream=False)
        async with http.get(gateway.url + "/metrics") as response:
            text = await response.text()

    tokens = _label_values(text, "sluice_tokens_total", "model")
    assert set(tokens) == {CONFIGURED, OTHER}
    # Two completion tokens per request (the simulator's `tokens=2`), none lost in the bounding.
    completions = _label_values(text, "sluice_tokens_total", "kind")
    assert completions["completion"] == 2 * (len(names) + 2)


async def test_methods_that_are_not_http_ones_are_counted_as_other(simulator: Simulator) -> None:
    """Requests with 30 made-up methods leave no method label outside HTTP's methods and `other`.

    aiohttp's C parser (llhttp) refuses a method outside its list of some 40 before any handler;
    its pure-Python parser (`AIOHTTP_NO_EXTENSIONS=1`, or a platform without the extension) takes
    any token, and the request is a 405 with its method in the access record.

    Catches: the method label taken from the request as it came (server/metrics.py, `_bound_method`).
    """
    rng = random.Random(15)
    with start_gateway(upstream=simulator, env={"AIOHTTP_NO_EXTENSIONS": "1"}) as gateway:
        async with aiohttp.ClientSession() as http:
            for _ in range(30):
                async with http.request(f"X{rng.getrandbits(32):08X}", gateway.url + "/v1/models") as response:
                    await response.read()
                    assert response.status == 405
            async with http.get(gateway.url + "/metrics") as response:
                text = await response.text()

    methods = _label_values(text, "sluice_requests_total", "method")
    assert set(methods) <= METHODS | {OTHER}
    assert methods[OTHER] >= 30


def _finished(metrics: Metrics, model: str) -> None:
    record = RequestRecord(started=0.0, route=ROUTE, outcome=Outcome.COMPLETED, stream=True, model=model)
    record.usage = {"prompt_tokens": 3, "completion_tokens": 2}
    metrics.chat_finished(record, 0.01, 200)


def test_made_up_model_names_leave_no_child_remembered() -> None:
    """1,000 made-up model names add the `other` children alone to the gateway's memory of children.

    Catches: a child remembered under the labels a client sent, before they were bounded
    (server/metrics.py, `Metrics._new_child`).
    """
    metrics = Metrics(models=ModelCatalog(ModelSettings(default="gpt-4o", available=("*",))))
    _finished(metrics, "gpt-4o")
    before = len(metrics._children)
    for name in _made_up(random.Random(16), 1000):
        _finished(metrics, name)

    assert len(metrics._children) == before + 2  # (other, prompt) and (other, completion)


def test_a_model_discovered_later_gets_its_own_label_from_then_on() -> None:
    """A name counted as `other` before discovery listed it is counted by its name after.

    Catches: a made-up name's bounding remembered, so a model the upstream lists later stays
    `other` (server/metrics.py, `Metrics._new_child`).
    """
    catalog = ModelCatalog(ModelSettings(default="gpt-4o", available=("*",), discover=True))
    metrics = Metrics(models=catalog)
    _finished(metrics, "llama-3-8b")
    catalog.update(["llama-3-8b"])
    _finished(metrics, "llama-3-8b")

    tokens = _label_values(metrics.exposition().decode(), "sluice_tokens_total", "model")
    assert tokens == {OTHER: 5.0, "llama-3-8b": 5.0}


def test_an_upstreams_error_codes_past_the_bound_are_counted_as_other() -> None:
    """Error codes an upstream makes up give at most MAX_ERROR_CODES series of their own, then `other`.

    Catches: the code label taken as it came (server/metrics.py, `Metrics._bound_code`).
    """
    metrics = Metrics()
    codes = [f"upstream-code-{number}" for number in range(MAX_ERROR_CODES + 50)]
    for code in codes:
        record = RequestRecord(started=0.0, route=ROUTE, outcome=Outcome.UPSTREAM_ERROR, stream=True)
        record.error_code = code
        metrics.chat_finished(record, 0.01, 502)

    counted = _label_values(metrics.exposition().decode(), "sluice_upstream_errors_total", "code")
    assert set(counted) == {*codes[:MAX_ERROR_CODES], OTHER}
    assert counted[OTHER] == 50
