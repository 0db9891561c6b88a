"""The browser's detached streams over plain HTTP: start then attach, resume, expiry, grace, stop, drain.

The gateway runs in-process against the simulator process, so the simulator's long-poll shows
what reached the upstream and when it was closed.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs
from yarl import URL

from server.app import create_app
from server.keys import LIFECYCLE, STREAMS
from server.streams.memory import RESERVE
from server.streams.reader import BATCH
from server.streams.store import Slice, StreamStore
from tests.conftest import AiohttpClient, make_settings
from tests.support.client import new_request_id, sim_wait
from tests.support.processes import Gateway, Simulator, start_gateway
from tests.support.security import bearer, sha256
from tests.support.sse import Event, iter_events, read_events, tokens_text

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture(autouse=True)
def no_stream_errors() -> Iterator[list[MutableMapping[str, Any]]]:
    """Fail a test whose generations logged an error: a task's failure would otherwise go unseen."""
    with capture_logs() as logs:
        yield logs
    errors = [log for log in logs if log["log_level"] in ("error", "critical")]
    assert errors == []


@pytest.fixture
def make_client(aiohttp_client: AiohttpClient, simulator: Simulator) -> MakeClient:
    """Build an in-process gateway on the simulator process, with settings sections overridden."""

    async def build(**sections: dict[str, Any]) -> Client:
        environ = {
            "AI_INTEGRATIONS_OPENAI_API_KEY": "sk-test-key-never-logged",
            "AI_INTEGRATIONS_OPENAI_BASE_URL": simulator.base_url,
        }
        client: Client = await aiohttp_client(create_app(make_settings(environ, **sections)))
        return client

    return build


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client()


async def start(client: Client, message: str, request_id: str | None = None) -> str:
    """POST /chat/streams; the new stream's id."""
    headers = {"X-Request-ID": request_id} if request_id else {}
    response = await client.post("/chat/streams", json={"message": message}, headers=headers)
    assert response.status == 201, await response.text()
    body = await response.json()
    assert body["url"] == f"/chat/streams/{body['id']}"
    return str(body["id"])


def events_only(events: list[Event]) -> list[Event]:
    """Dispatched events with data: no comments, no connection preamble (`retry:` and `id:` only)."""
    return [e for e in events if e.comment is None and e.data]


async def read(client: Client, path: str, after: str | None = None, **params: str) -> list[Event]:
    """Every event of one connection (Last-Event-ID `after`), checking it answered 200."""
    headers = {"Last-Event-ID": after} if after else {}
    async with client.get(path, headers=headers, params=params) as response:
        assert response.status == 200, await response.text()
        return events_only(await read_events(response))


async def read_some(client: Client, path: str, count: int, **kwargs: Any) -> list[Event]:
    """The first `count` events of a connection, which is then dropped."""
    seen: list[Event] = []
    async with client.get(path, **kwargs) as response:
        assert response.status == 200
        async for event in iter_events(response):
            if event.comment is None and event.data:
                seen.append(event)
            if len(seen) == count:
                break
        response.close()
    return seen


def as_tuples(events: list[Event]) -> list[tuple[str | None, str, str]]:
    return [(e.id, e.event, e.data) for e in events]


# Start, then attach


async def test_starting_a_stream_answers_201_with_its_id_url_and_location(client: Client) -> None:
    response = await client.post("/chat/streams", json={"message": "hi\n#sim tokens=2"})
    body = await response.json()
    assert response.status == 201
    assert set(body) == {"id", "url"}
    assert response.headers["Location"] == body["url"] == f"/chat/streams/{body['id']}"


async def test_attaching_streams_tokens_then_done_with_stream_ids_and_usage(client: Client) -> None:
    stream_id = await start(client, "hello\n#sim tokens=5")
    async with client.get(f"/chat/streams/{stream_id}") as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        raw = await read_events(response)
    preamble, events = raw[0], events_only(raw)
    assert preamble.retry == 1000  # stream.retry_ms of config/test.toml
    assert preamble.id == f"{stream_id}:0"
    assert [e.event for e in events] == ["token"] * 5 + ["done"]
    assert [e.id for e in events] == [f"{stream_id}:{n}" for n in range(1, 7)]
    assert events[-1].json()["usage"]["completion_tokens"] == 5


async def test_the_done_event_names_the_model_and_upstream_that_answered_as_on_chat_stream(client: Client) -> None:
    stream_id = await start(client, "hello\n#sim tokens=2")
    done = (await read(client, f"/chat/streams/{stream_id}"))[-1].json()
    async with client.post("/chat/stream", json={"message": "hello\n#sim tokens=2"}) as response:
        attached = events_only(await read_events(response))[-1].json()

    assert (done["model"], done["upstream"]) == (attached["model"], attached["upstream"])
    assert done["model"] == "gpt-4o"


# Resume


async def test_a_reconnect_after_each_event_id_gets_exactly_the_rest(client: Client) -> None:
    stream_id = await start(client, "count with me\n#sim tokens=8")
    path = f"/chat/streams/{stream_id}"
    everything = await read(client, path)
    for index, event in enumerate(everything[:-1]):
        rest = await read(client, path, after=event.id)
        assert as_tuples(rest) == as_tuples(everything[index + 1 :])


async def test_the_last_event_id_query_parameter_resumes_like_the_header(client: Client) -> None:
    stream_id = await start(client, "query\n#sim tokens=4")
    path = f"/chat/streams/{stream_id}"
    everything = await read(client, path)
    rest = await read(client, path, lastEventId=f"{stream_id}:2")
    assert as_tuples(rest) == as_tuples(everything[2:])


async def test_a_reconnect_mid_generation_continues_with_no_gap_and_no_repeat(client: Client) -> None:
    stream_id = await start(client, "long one\n#sim tokens=40 gap_ms=10")
    path = f"/chat/streams/{stream_id}"
    first = await read_some(client, path, 5)
    rest = await read(client, path, after=first[-1].id)
    seqs = [int(str(e.id).rsplit(":", 1)[1]) for e in first + rest]
    assert seqs == list(range(1, 42))
    assert rest[-1].event == "done"
    assert as_tuples(first + rest) == as_tuples(await read(client, path))


async def test_a_readers_access_line_says_it_read_the_stream_to_its_end(
    client: Client, no_stream_errors: list[MutableMapping[str, Any]]
) -> None:
    stream_id = await start(client, "read whole\n#sim tokens=3")
    assert (await read(client, f"/chat/streams/{stream_id}"))[-1].event == "done"
    [line] = [
        log
        for log in no_stream_errors
        if log["event"] == "request_finished" and log["path"] == f"/chat/streams/{stream_id}"
    ]
    assert line["outcome"] == "completed"


async def test_a_reconnect_after_the_final_event_is_204(client: Client) -> None:
    stream_id = await start(client, "short\n#sim tokens=2")
    everything = await read(client, f"/chat/streams/{stream_id}")
    async with client.get(f"/chat/streams/{stream_id}", headers={"Last-Event-ID": str(everything[-1].id)}) as r:
        assert r.status == 204


async def test_an_unknown_stream_is_204(client: Client) -> None:
    async with client.get("/chat/streams/never-was") as response:
        assert response.status == 204
    async with client.get("/chat/streams/never-was", headers={"Last-Event-ID": "never-was:3"}) as response:
        assert response.status == 204


async def test_a_finished_stream_expires_after_its_retention_time(make_client: MakeClient) -> None:
    client = await make_client(browser={"retention_seconds": 0.2})
    stream_id = await start(client, "fleeting\n#sim tokens=3")
    path = f"/chat/streams/{stream_id}"
    everything = await read(client, path)
    assert everything[-1].event == "done"
    # Not a synchronisation sleep: the app shares this loop, and its expiry timer was set when the
    # final event was stored, before this shorter-or-equal wait began.
    await asyncio.sleep(0.3)
    async with client.get(path) as response:
        assert response.status == 204
    async with client.get(path, headers={"Last-Event-ID": str(everything[0].id)}) as response:
        assert response.status == 204


@pytest.mark.parametrize("last_event_id", ["other-stream:3", "no-sequence", "abc:-1", "abc:1:2", "a b:1"])
async def test_a_last_event_id_of_another_stream_or_malformed_is_400(client: Client, last_event_id: str) -> None:
    stream_id = await start(client, "x\n#sim tokens=1")
    async with client.get(f"/chat/streams/{stream_id}", headers={"Last-Event-ID": last_event_id}) as response:
        body = await response.json()
    assert response.status == 400
    assert body["error"]["param"] == "Last-Event-ID"


async def test_a_stream_that_expires_while_being_read_ends_with_a_failed_event_not_silently(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream_id = await start(client, f"x\n#sim tokens={2 * BATCH} gap_ms=0")
    everything = await read(client, f"/chat/streams/{stream_id}")
    store = client.app[STREAMS].store
    kept = store.read_after

    async def gone_after_the_first_batch(stream_id: str, seq: int, limit: int) -> Slice | None:
        # What the store answers once the stream was evicted to make room, or its retention ended.
        return await kept(stream_id, seq, limit) if seq == 0 else None

    monkeypatch.setattr(store, "read_after", gone_after_the_first_batch)
    replay = await read(client, f"/chat/streams/{stream_id}")

    assert len(replay) == BATCH + 1 < len(everything)
    assert replay[-1].event == "failed"
    assert replay[-1].json()["error"]["code"] == "stream_expired"


async def test_a_resume_from_before_the_kept_events_is_410_and_from_inside_them_works(make_client: MakeClient) -> None:
    client = await make_client(browser={"max_buffered_events": 4})
    stream_id = await start(client, "many\n#sim tokens=10")
    path = f"/chat/streams/{stream_id}"
    # Read whole first: unread, so few events would be held back, not kept and dropped.
    assert len(await read(client, path)) == 11
    tail = await read(client, path, after=f"{stream_id}:7")  # events 8..11, the last four
    assert [e.id for e in tail] == [f"{stream_id}:{n}" for n in range(8, 12)]
    async with client.get(path, headers={"Last-Event-ID": f"{stream_id}:1"}) as response:
        body = await response.json()
    assert response.status == 410
    assert body["error"]["code"] == "resume_unavailable"


# Grace period and stop


async def test_with_no_reader_for_the_grace_period_the_upstream_is_cancelled(
    make_client: MakeClient, simulator: Simulator
) -> None:
    client = await make_client(browser={"reader_grace_seconds": 0.2})
    rid = new_request_id("unread")
    stream_id = await start(client, "nobody listens\n#sim tokens=100000 gap_ms=5", rid)
    async with aiohttp.ClientSession() as http:
        record = await sim_wait(http, simulator.url, rid, "closed")
    assert record["outcome"] == "client_aborted"
    assert record["chunks_sent"] < 100000
    events = await read(client, f"/chat/streams/{stream_id}")
    assert events[-1].event == "failed"
    assert events[-1].json()["error"]["code"] == "stream_abandoned"


async def test_a_reader_that_leaves_starts_the_grace_period(make_client: MakeClient, simulator: Simulator) -> None:
    client = await make_client(browser={"reader_grace_seconds": 0.2})
    rid = new_request_id("left")
    stream_id = await start(client, "then they left\n#sim tokens=100000 gap_ms=5", rid)
    await read_some(client, f"/chat/streams/{stream_id}", 3)
    async with aiohttp.ClientSession() as http:
        record = await sim_wait(http, simulator.url, rid, "closed")
    assert record["outcome"] == "client_aborted"


async def test_a_reader_attached_within_the_grace_period_keeps_the_stream_going(
    make_client: MakeClient, simulator: Simulator
) -> None:
    client = await make_client(browser={"reader_grace_seconds": 0.2})
    rid = new_request_id("kept")
    stream_id = await start(client, "worth reading\n#sim tokens=20 gap_ms=30", rid)  # 0.6 s, three graces
    events = await read(client, f"/chat/streams/{stream_id}")
    async with aiohttp.ClientSession() as http:
        record = await sim_wait(http, simulator.url, rid, "closed")
    assert events[-1].event == "done"
    assert record["outcome"] == "completed"


async def test_delete_closes_the_upstream_and_readers_get_a_final_failed_event(
    client: Client, simulator: Simulator
) -> None:
    rid = new_request_id("delete")
    stream_id = await start(client, "stop me\n#sim tokens=100000 gap_ms=5", rid)
    path = f"/chat/streams/{stream_id}"
    async with client.get(path) as reader:
        seen: list[Event] = []
        async for event in iter_events(reader):
            if event.comment is None and event.data:
                seen.append(event)
            if len(seen) == 3:
                response = await client.delete(path)
                assert response.status == 204
                async with aiohttp.ClientSession() as http:
                    record = await sim_wait(http, simulator.url, rid, "closed")
                assert record["outcome"] == "client_aborted"
    assert seen[-1].event == "failed"
    assert seen[-1].json()["error"]["code"] == "stream_cancelled"
    assert [int(str(e.id).rsplit(":", 1)[1]) for e in seen] == list(range(1, len(seen) + 1))


async def test_delete_of_an_unknown_or_finished_stream_is_204(client: Client) -> None:
    assert (await client.delete("/chat/streams/never-was")).status == 204
    stream_id = await start(client, "done already\n#sim tokens=1")
    await read(client, f"/chat/streams/{stream_id}")
    assert (await client.delete(f"/chat/streams/{stream_id}")).status == 204


# Failures and deadlines end with an explicit event


async def test_an_upstream_refusal_before_the_first_token_is_a_failed_event(client: Client) -> None:
    stream_id = await start(client, "x\n#sim fault=rate_limit")
    events = await read(client, f"/chat/streams/{stream_id}")
    assert [e.event for e in events] == ["failed"]
    assert events[0].json()["error"]["type"] == "rate_limit_error"


async def test_the_first_token_deadline_ends_a_detached_stream_and_closes_its_upstream(
    make_client: MakeClient, simulator: Simulator
) -> None:
    client = await make_client(upstream={"first_token_timeout": 0.2})
    rid = new_request_id("detached-ttft")
    stream_id = await start(client, "x\n#sim fault=hang_first", rid)
    events = await read(client, f"/chat/streams/{stream_id}")
    async with aiohttp.ClientSession() as http:
        record = await sim_wait(http, simulator.url, rid, "closed")
    assert events[-1].json()["error"]["code"] == "first_token_timeout"
    assert record["outcome"] == "client_aborted"


# Drain and cleanup


async def test_draining_ends_detached_generations_with_a_shutdown_event_and_retry_hint(
    client: Client, simulator: Simulator
) -> None:
    rid = new_request_id("detached-drain")
    stream_id = await start(client, "x\n#sim fault=hang_first", rid)
    async with client.get(f"/chat/streams/{stream_id}") as response:
        async with aiohttp.ClientSession() as http:
            await sim_wait(http, simulator.url, rid, "opened")
            assert client.app[LIFECYCLE].live == 1  # counted like any live stream
            client.app[LIFECYCLE].end_all()
            events = events_only(await read_events(response))
            record = await sim_wait(http, simulator.url, rid, "closed")
    assert events[-1].event == "failed"
    assert events[-1].json()["error"]["code"] == "server_shutting_down"
    assert events[-1].retry == 5000  # server.retry_after, in milliseconds
    assert record["outcome"] == "client_aborted"


async def test_while_draining_new_streams_are_refused_with_503_and_retry_after(client: Client) -> None:
    client.app[LIFECYCLE].draining = True
    posted = await client.post("/chat/streams", json={"message": "late"})
    got = await client.get("/chat/stream", params={"message": "late"})
    for response in (posted, got):
        assert response.status == 503
        assert response.headers["Retry-After"] == "5"
        assert (await response.json())["error"]["code"] == "server_shutting_down"


async def test_application_cleanup_ends_running_generations_and_closes_their_upstreams(
    make_client: MakeClient, simulator: Simulator
) -> None:
    client = await make_client()
    rid = new_request_id("cleanup")
    await start(client, "x\n#sim fault=hang_first", rid)
    async with aiohttp.ClientSession() as http:
        await sim_wait(http, simulator.url, rid, "opened")
        await client.close()
        record = await sim_wait(http, simulator.url, rid, "closed")
    assert record["outcome"] == "client_aborted"


async def test_stopping_the_application_ends_a_stream_being_read_with_the_shutdown_event(
    aiohttp_server: Callable[..., Awaitable[TestServer]], simulator: Simulator
) -> None:
    environ = {
        "AI_INTEGRATIONS_OPENAI_API_KEY": "sk-test-key-never-logged",
        "AI_INTEGRATIONS_OPENAI_BASE_URL": simulator.base_url,
    }
    server = await aiohttp_server(create_app(make_settings(environ)))
    rid = new_request_id("app-stop")
    async with aiohttp.ClientSession() as http:  # not the server's own client: it would leave first
        created = await http.post(
            server.make_url("/chat/streams"),
            json={"message": "x\n#sim fault=hang_first"},
            headers={"X-Request-ID": rid},
        )
        url = server.make_url((await created.json())["url"])
        async with http.get(url) as response:
            await sim_wait(http, simulator.url, rid, "opened")
            await server.close()  # no drain ran: shutdown itself must end the stream, not a timeout
            events = events_only(await read_events(response))
    assert events[-1].json()["error"]["code"] == "server_shutting_down"


async def test_the_store_refuses_a_stream_beyond_its_limit_with_503(make_client: MakeClient) -> None:
    client = await make_client(browser={"max_streams": 1})
    await start(client, "x\n#sim fault=hang_first")
    response = await client.post("/chat/streams", json={"message": "one too many"})
    body = await response.json()
    assert response.status == 503
    assert body["error"]["code"] == "overloaded"
    assert response.headers["Retry-After"] == "5"


# One step: GET /chat/stream


async def test_the_one_step_get_names_its_stream_before_the_first_event(client: Client) -> None:
    async with client.get("/chat/stream", params={"message": "one step\n#sim tokens=3"}) as response:
        assert response.status == 200
        raw = await read_events(response)
    preamble, events = raw[0], events_only(raw)
    stream_id = str(preamble.id).rsplit(":", 1)[0]
    assert preamble.id == f"{stream_id}:0"
    assert preamble.retry == 1000
    assert [e.id for e in events] == [f"{stream_id}:{n}" for n in range(1, 5)]
    assert events[-1].event == "done"


@pytest.mark.parametrize(
    ("site", "origin", "status"),
    [
        ("cross-site", "https://evil.example", 403),  # an EventSource on a page CORS does not allow
        ("cross-site", None, 403),  # an <img>: no Origin at all
        ("same-site", "https://other.app.example", 403),
        ("cross-site", "https://app.example", 200),  # the allowed origin
        ("same-origin", None, 200),  # Sluice's own page
        (None, None, 200),  # not a browser
        (None, "https://evil.example", 403),  # over plain http: no Sec-Fetch-Site, the Origin alone
        (None, "https://app.example", 200),
    ],
)
async def test_a_one_step_get_from_a_page_of_a_site_cors_does_not_allow_starts_nothing(
    make_client: MakeClient, site: str | None, origin: str | None, status: int
) -> None:
    client = await make_client(server={"cors_origins": ["https://app.example"]})
    headers = {name: value for name, value in (("Sec-Fetch-Site", site), ("Origin", origin)) if value is not None}
    async with client.get("/chat/stream", params={"message": "hi\n#sim tokens=2"}, headers=headers) as response:
        assert response.status == status
        if status == 403:
            assert (await response.json())["error"]["code"] == "cors_origin_not_allowed"
            assert client.app[STREAMS].live == 0
        else:
            assert events_only(await read_events(response))[-1].event == "done"


async def test_a_one_step_reconnect_attaches_to_the_stream_its_last_event_id_names(
    client: Client, simulator: Simulator
) -> None:
    params = {"message": "one step, twice\n#sim tokens=30 gap_ms=10"}
    first = await read_some(client, "/chat/stream", 4, params=params)
    reconnect_rid = new_request_id("one-step-reconnect")
    headers = {"Last-Event-ID": str(first[-1].id), "X-Request-ID": reconnect_rid}
    async with client.get("/chat/stream", params=params, headers=headers) as response:
        rest = events_only(await read_events(response))
    stream_id = str(first[0].id).rsplit(":", 1)[0]
    assert [e.id for e in first + rest] == [f"{stream_id}:{n}" for n in range(1, 32)]
    assert rest[-1].event == "done"
    async with aiohttp.ClientSession() as http:  # the reconnect started nothing upstream
        probe = f"{simulator.url}/_sim/requests/{reconnect_rid}"
        async with http.get(probe, params={"until": "opened", "timeout": "0"}) as sim:
            assert sim.status == 404


async def test_the_one_step_get_with_an_empty_last_event_id_parameter_starts_a_stream(client: Client) -> None:
    events = await read(client, "/chat/stream", message="hi\n#sim tokens=2", lastEventId="")

    assert events[-1].event == "done"


async def test_a_last_event_id_parameter_given_twice_is_refused_naming_it(client: Client) -> None:
    # yarl keeps the first of a repeated name: the reconnect would resume from a point not chosen.
    query = "message=hi&lastEventId=&lastEventId=x:1"
    async with client.get(f"/chat/stream?{query}") as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert (error["param"], error["code"]) == ("lastEventId", "invalid_request")


async def test_a_last_event_id_header_given_twice_is_refused_naming_it(client: Client) -> None:
    headers = [("Last-Event-ID", "x:1"), ("Last-Event-ID", "x:2")]
    async with client.get("/chat/stream", headers=headers) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["param"] == "Last-Event-ID"


async def test_the_one_step_get_reconnect_after_the_final_event_is_204(client: Client) -> None:
    async with client.get("/chat/stream", params={"message": "x\n#sim tokens=1"}) as response:
        events = events_only(await read_events(response))
    async with client.get("/chat/stream", headers={"Last-Event-ID": str(events[-1].id)}) as response:
        assert response.status == 204


async def test_one_step_text_equals_the_chat_reply_for_the_same_prompt(client: Client) -> None:
    message = "same words\n#sim tokens=6"
    reply = await (await client.post("/chat", json={"message": message})).json()
    async with client.get("/chat/stream", params={"message": message}) as response:
        assert tokens_text(events_only(await read_events(response))) == reply["response"]


# Validation at the edge


@pytest.mark.parametrize(
    ("params", "status", "param"),
    [
        ({}, 400, "message"),
        ({"message": ""}, 400, "message"),
        ({"message": "   "}, 400, "message"),
        ({"message": "hi", "model": "gpt-2"}, 404, "model"),
    ],
)
async def test_one_step_get_validates_its_query_like_post_chat(
    client: Client, params: dict[str, str], status: int, param: str
) -> None:
    response = await client.get("/chat/stream", params=params)
    body = await response.json()
    assert response.status == status
    assert body["error"]["param"] == param
    assert set(body["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("query", "param"),
    [("message=hi&message=there", "message"), ("message=hi&model=gpt-4o&model=gpt-4o-mini", "model")],
)
async def test_one_step_get_refuses_a_field_given_twice(client: Client, query: str, param: str) -> None:
    """yarl keeps the first value: the other would be dropped without a word."""
    response = await client.get(URL(f"/chat/stream?{query}", encoded=True))
    body = await response.json()
    assert response.status == 400
    assert body["error"]["param"] == param


async def test_one_step_get_refuses_a_message_that_is_not_utf8_once_decoded(client: Client) -> None:
    """yarl decodes the byte as U+FFFD: the model would get another message than the client sent."""
    response = await client.get(URL("/chat/stream?message=caf%E9", encoded=True))
    body = await response.json()
    assert response.status == 400
    assert body["error"]["param"] == "message"


async def test_one_step_get_keeps_a_message_that_holds_a_replacement_character(client: Client) -> None:
    response = await client.get(URL("/chat/stream?message=%EF%BF%BD%20%23sim%20tokens%3D1", encoded=True))
    assert response.status == 200
    assert b"event: done" in await response.read()


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({}, 400, "message"),
        ({"message": 42}, 400, "message"),
        ({"message": "hi", "history": [{"role": "robot", "content": "beep"}]}, 400, "history[0].role"),
        ({"message": "hi", "temperature": 3}, 400, "temperature"),
        ({"message": "hi", "model": "gpt-2"}, 404, "model"),
    ],
)
async def test_starting_a_stream_validates_its_body_like_post_chat(
    client: Client, body: dict[str, Any], status: int, param: str
) -> None:
    response = await client.post("/chat/streams", json=body)
    error = (await response.json())["error"]
    assert response.status == status
    assert error["param"] == param


async def test_starting_a_stream_needs_a_json_body(client: Client) -> None:
    assert (await client.post("/chat/streams", data=b"message=hi")).status == 415
    response = await client.post("/chat/streams", data=b"{", headers={"Content-Type": "application/json"})
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "invalid_json"


async def test_a_head_request_does_not_start_a_stream(client: Client) -> None:
    response = await client.head("/chat/stream", params={"message": "hi"})
    assert response.status == 405


# HEAD on a stream: what its GET would answer, without a body and without reading the stream

# The headers an EventSource's GET is answered with; a HEAD must carry the same.
SSE_HEADERS = ("Content-Type", "Cache-Control", "X-Accel-Buffering")


async def test_head_on_a_live_stream_answers_the_get_headers_without_a_body_and_attaches_no_reader(
    client: Client,
) -> None:
    stream_id = await start(client, "x\n#sim fault=hang_first")
    path = f"/chat/streams/{stream_id}"
    async with client.head(path) as head:
        body = await head.read()
        # Answered, not served: no connection reads the stream (a GET would, until the stream ends).
        readers = client.app[STREAMS].readers(stream_id)
    async with client.get(path) as get:
        assert get.status == 200
        expected = {name: get.headers.get(name) for name in SSE_HEADERS}

    assert head.status == 200
    assert {name: head.headers.get(name) for name in SSE_HEADERS} == expected
    assert body == b""
    assert readers == 0


async def test_head_on_an_unknown_stream_or_after_its_final_event_is_204_like_get(client: Client) -> None:
    stream_id = await start(client, "short\n#sim tokens=2")
    last = str((await read(client, f"/chat/streams/{stream_id}"))[-1].id)

    unknown = await client.head("/chat/streams/never-was")
    after_the_end = await client.head(f"/chat/streams/{stream_id}", headers={"Last-Event-ID": last})

    assert (unknown.status, after_the_end.status) == (204, 204)


async def test_head_from_before_the_kept_events_is_410_like_get(make_client: MakeClient) -> None:
    client = await make_client(browser={"max_buffered_events": 4})
    stream_id = await start(client, "many\n#sim tokens=10")
    await read(client, f"/chat/streams/{stream_id}")

    response = await client.head(f"/chat/streams/{stream_id}", headers={"Last-Event-ID": f"{stream_id}:1"})

    assert response.status == 410
    assert await response.read() == b""


async def test_head_from_an_allowed_origin_is_marked_for_cors_like_get(client: Client) -> None:
    stream_id = await start(client, "x\n#sim tokens=2")
    await read(client, f"/chat/streams/{stream_id}")
    origin = {"Origin": "https://app.example"}

    response = await client.head(f"/chat/streams/{stream_id}", headers=origin)

    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"  # no keys, no list: any origin


async def test_a_preflight_for_a_head_with_a_key_header_is_allowed_like_one_for_get(client: Client) -> None:
    headers = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "HEAD",
        "Access-Control-Request-Headers": "authorization",
    }

    response = await client.options("/chat/streams/any", headers=headers)

    assert response.status == 200
    assert "HEAD" in response.headers["Access-Control-Allow-Methods"].split(", ")


# The byte budget across browser streams, shared between keys

KEY_A = "sk-browser-a-5b1e9c3d7f2a4e6b"
KEY_B = "sk-browser-b-8d4c2a6e0f1b3c5d"


async def test_a_key_whose_unread_streams_hold_the_byte_budget_gets_503_and_another_key_still_starts_one(
    make_client: MakeClient,
) -> None:
    keys = [{"name": name, "key_sha256": sha256(key)} for name, key in (("a", KEY_A), ("b", KEY_B))]
    client = await make_client(auth={"keys": keys}, browser={"max_kept_bytes": 1})
    started = await client.post(
        "/chat/streams", json={"message": "unread\n#sim tokens=100000 gap_ms=5"}, headers=bearer(KEY_A)
    )
    assert started.status == 201
    # One event kept, read or not, and a's live stream holds the whole (one byte) budget.
    await read_some(client, (await started.json())["url"], 1, headers=bearer(KEY_A))

    refused = await client.post("/chat/streams", json={"message": "more"}, headers=bearer(KEY_A))
    admitted = await client.post("/chat/streams", json={"message": "mine\n#sim tokens=1"}, headers=bearer(KEY_B))

    assert refused.status == 503
    assert (await refused.json())["error"]["code"] == "overloaded"
    assert admitted.status == 201


# Growth past the byte budget (black-box review: streams admitted before their first token grew
# without regard to it). In memory and on Redis, whose store keeps its own streams in memory too.

BUDGET = 20_000  # bytes: a few hundred events


@pytest.fixture(params=["memory", "redis"])
def store_sections(request: pytest.FixtureRequest) -> dict[str, dict[str, Any]]:
    """Settings sections for the store: this process's memory, or a Redis of the test's own."""
    if request.param == "memory":
        return {}
    return {"redis": {"url": request.getfixturevalue("redis_server").url}}


def watch_holds(monkeypatch: pytest.MonkeyPatch, store: StreamStore) -> asyncio.Event:
    """Set once a generation waits for room in `store`: it holds its upstream back for the budget."""
    holding = asyncio.Event()
    wait_for_room = store.wait_for_room

    async def watched(stream_id: str) -> None:
        holding.set()
        await wait_for_room(stream_id)

    monkeypatch.setattr(store, "wait_for_room", watched)
    return holding


async def test_a_stream_growing_past_the_byte_budget_is_held_back_then_read_to_its_end(
    make_client: MakeClient, store_sections: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await make_client(browser={"max_kept_bytes": BUDGET}, **store_sections)
    store = client.app[STREAMS].store
    holding = watch_holds(monkeypatch, store)
    tokens = 3000  # about 200 kB of events: ten times the budget
    stream_id = await start(client, f"x\n#sim tokens={tokens} gap_ms=0")

    await asyncio.wait_for(holding.wait(), 30)
    # Held before its next read: the budget and at most one upstream read's events past it.
    assert BUDGET <= store.kept_bytes <= BUDGET + RESERVE
    # Its reader had the first events, which go to make room: it reads on to the end.
    events = await read(client, f"/chat/streams/{stream_id}")
    assert sum(e.event == "token" for e in events) == tokens
    assert events[-1].event == "done"
    assert store.kept_bytes <= BUDGET + RESERVE


async def test_a_stream_held_back_for_the_byte_budget_is_still_ended_by_the_reader_grace_period(
    make_client: MakeClient,
    store_sections: dict[str, dict[str, Any]],
    simulator: Simulator,
    monkeypatch: pytest.MonkeyPatch,
    no_stream_errors: list[MutableMapping[str, Any]],
) -> None:
    client = await make_client(browser={"max_kept_bytes": BUDGET, "reader_grace_seconds": 2.0}, **store_sections)
    holding = watch_holds(monkeypatch, client.app[STREAMS].store)
    rid = new_request_id("held-unread")
    stream_id = await start(client, "nobody reads\n#sim tokens=100000 gap_ms=0", rid)

    await asyncio.wait_for(holding.wait(), 30)  # well within the grace period: the first token comes at once
    async with aiohttp.ClientSession() as http:
        record = await sim_wait(http, simulator.url, rid, "closed", seconds=30)
    assert record["outcome"] == "client_aborted"
    assert record["chunks_sent"] < 100000
    # Logged before its upstream was closed. (Finished past the budget with nothing read, the stream
    # then goes at once: its key holds over its share.)
    assert [log["stream_id"] for log in no_stream_errors if log["event"] == "browser_stream_abandoned"] == [stream_id]


# The demo page


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/", "text/html"), ("/static/app.js", "text/javascript"), ("/static/style.css", "text/css")],
)
async def test_the_page_and_its_files_carry_a_strict_policy(client: Client, path: str, content_type: str) -> None:
    response = await client.get(path)
    assert response.status == 200
    assert response.content_type == content_type
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert "unsafe-eval" not in policy
    assert "connect-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_the_page_has_no_inline_script_or_style(client: Client) -> None:
    html = await (await client.get("/")).text()
    assert "<script src=" in html
    assert "<script>" not in html
    assert "<style" not in html
    assert "style=" not in html
    assert "onclick" not in html


@pytest.mark.parametrize("name", ["index.html", "missing.js", "..%2Fapp.py", "..%2F..%2Frun.py"])
async def test_only_the_page_files_are_served(client: Client, name: str) -> None:
    response = await client.get(f"/static/{name}")
    assert response.status == 404


# A real process: SIGTERM


@pytest.fixture
def draining_gateway(simulator: Simulator) -> Iterator[Gateway]:
    gateway = start_gateway(upstream=simulator, env={"SLUICE_SERVER_DRAIN_TIMEOUT": "0.2"})
    yield gateway
    gateway.process.stop()


async def test_sigterm_ends_a_detached_stream_with_the_shutdown_event_and_a_retry_hint(
    draining_gateway: Gateway, simulator: Simulator
) -> None:
    rid = new_request_id("detached-sigterm")
    async with aiohttp.ClientSession() as http:
        created = await http.post(
            draining_gateway.url + "/chat/streams",
            json={"message": "x\n#sim fault=hang_first"},
            headers={"X-Request-ID": rid},
        )
        url = draining_gateway.url + (await created.json())["url"]
        async with http.get(url) as response:
            await sim_wait(http, simulator.url, rid, "opened")
            draining_gateway.process.signal(signal.SIGTERM)
            events = events_only(await read_events(response))
        record = await sim_wait(http, simulator.url, rid, "closed")
    assert events[-1].json()["error"]["code"] == "server_shutting_down"
    assert events[-1].retry == 5000
    assert record["outcome"] == "client_aborted"
    assert draining_gateway.process.wait(15) == 0
    finished = draining_gateway.process.wait_for_event("browser_stream_finished", request_id=rid)
    assert finished["outcome"] == "shutdown"


class EventSourceLike:
    """What EventSource keeps between connections: the last `id:` it saw, even on an event with no data."""

    def __init__(self, client: Client, path: str) -> None:
        self.client = client
        self.path = path
        self.last_event_id: str | None = None
        self.tokens: list[str] = []

    async def connect(self, *, drop_after_tokens: int | None = None, drop_after_preamble: bool = False) -> Event:
        """One connection, resumed from `last_event_id`; return its preamble (the first event it got)."""
        headers = {"Last-Event-ID": self.last_event_id} if self.last_event_id else {}
        preamble: Event | None = None
        async with self.client.get(self.path, headers=headers) as response:
            assert response.status == 200
            async for event in iter_events(response):
                if event.id is not None:
                    self.last_event_id = event.id
                if preamble is None:
                    preamble = event
                    if drop_after_preamble:
                        break
                    continue
                if event.event == "token":
                    self.tokens.append(event.json()["content"])
                if drop_after_tokens is not None and len(self.tokens) == drop_after_tokens:
                    break
            response.close()
        assert preamble is not None
        return preamble


async def test_a_resumed_connection_starts_with_the_id_the_client_gave(client: Client) -> None:
    """Catches: the preamble's `id:` in server/streams/reader.py naming the stream's first id (`<id>:0`)."""
    stream_id = await start(client, "resume\n#sim tokens=30 gap_ms=5")
    source = EventSourceLike(client, f"/chat/streams/{stream_id}")
    await source.connect(drop_after_tokens=3)
    given = source.last_event_id
    assert given == f"{stream_id}:3"

    preamble = await source.connect(drop_after_tokens=4)

    assert preamble.id == given
    assert preamble.data == ""


async def test_a_second_drop_before_the_next_event_resumes_without_duplicates(client: Client) -> None:
    """A connection that gets only its preamble, then drops: the next one carries on, repeating nothing.

    Catches: the preamble's `id:` naming the stream's first id (server/streams/reader.py): EventSource
    takes it as lastEventId, and the next reconnect replays the text from the start.
    """
    stream_id = await start(client, "twice\n#sim tokens=20 gap_ms=5")
    source = EventSourceLike(client, f"/chat/streams/{stream_id}")
    await source.connect(drop_after_tokens=5)
    await source.connect(drop_after_preamble=True)
    await source.connect()

    everything = await read(client, f"/chat/streams/{stream_id}")
    assert source.tokens == [e.json()["content"] for e in everything if e.event == "token"]


async def test_a_drained_reader_of_a_stream_generated_here_gets_the_generations_final_event_alone(
    client: Client, simulator: Simulator
) -> None:
    rid = new_request_id("drained-reader-here")
    stream_id = await start(client, "x\n#sim fault=hang_first", rid)
    async with client.get(f"/chat/streams/{stream_id}") as response:
        async with aiohttp.ClientSession() as http:
            await sim_wait(http, simulator.url, rid, "opened")
        async with asyncio.timeout(10):  # drain(0) ends the stream at once
            await client.app[LIFECYCLE].drain(0)
            events = events_only(await read_events(response))
    # The generation's stored event, with its id, and no second end from the reader's own drain.
    assert [(e.event, e.id) for e in events] == [("failed", f"{stream_id}:1")]
    assert events[0].json()["error"]["code"] == "server_shutting_down"
