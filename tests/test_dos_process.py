"""No cheap denial of service, on `python run.py` processes: slow clients, connection floods,
hostile upstreams and unread browser streams each cost a bounded amount, for a bounded time."""

from __future__ import annotations

import asyncio
import json
import resource
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psutil
import pytest

from server.streams.memory import RESERVE
from tests.support.client import new_request_id, open_unread_stream, sim_wait
from tests.support.processes import Gateway, Simulator, start_gateway
from tests.support.refused_upload import CLOSED_IN_ORDER, upload_refused_half_way
from tests.support.security import KEY_ALPHA, KEY_FROM_ENV, bearer, start_keyed_gateway
from tests.support.sse import read_events

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
# Far above the deadlines under test, so a loaded machine does not fail a test that works.
CUT_BOUND = 15.0
CONNECTION_CAP = 500
LOW_SOFT_LIMIT = 256
IDLE_CONNECTIONS = 2000
BUSY_CAP = 20
CAP_OF_THE_BURST = 10
IDLE_BEFORE_THE_BURST = 7
BURST_OVER_THE_CAP = 12
MIB = 1 << 20
OBSERVATION_SECONDS = 2.0


@pytest.fixture(scope="module")
def strict(simulator: Simulator) -> Iterator[Gateway]:
    """Short header and body deadlines."""
    gateway = start_gateway(
        upstream=simulator,
        env={
            "SLUICE_CONNECTIONS_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
            "SLUICE_CONNECTIONS_BODY_TIMEOUT": str(BODY_TIMEOUT),
        },
    )
    yield gateway
    gateway.process.stop()


@pytest.fixture(scope="module")
def facing_hostile(hostile: Simulator) -> Iterator[Gateway]:
    """A gateway whose upstream misbehaves; small reply cap so memory growth would show."""
    gateway = start_gateway(upstream=hostile, env={"SLUICE_CONNECTIONS_MAX_UPSTREAM_REPLY_BYTES": str(MIB)})
    yield gateway
    gateway.process.stop()


def port_of(gateway: Gateway) -> int:
    return int(gateway.url.rsplit(":", 1)[1])


async def health_ok(gateway: Gateway) -> bool:
    async with aiohttp.ClientSession() as http, http.get(gateway.url + "/health") as r:
        return r.status == 200


# --- slow clients ------------------------------------------------------------------------------


async def test_a_slow_header_client_is_cut_at_the_header_timeout_while_health_answers(strict: Gateway) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(strict))
    started = time.monotonic()
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")

    async def trickle() -> None:
        # One more header byte now and then: arriving data must not extend the deadline.
        for byte in b"X-Slow: " + b"a" * 1000:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.1)  # pacing the attacker, not waiting for the gateway

    trickling = asyncio.create_task(trickle())
    try:
        assert await health_ok(strict)
        assert not reader.at_eof()  # /health answered while the slow client was still connected
        async with asyncio.timeout(CUT_BOUND):
            rest = await reader.read()
        elapsed = time.monotonic() - started
    finally:
        trickling.cancel()
        writer.close()
    assert rest == b""  # cut without an answer: nothing was ever complete enough to answer
    assert elapsed >= HEADER_TIMEOUT * 0.9


async def test_a_slow_body_client_gets_408_and_the_connection_closed(strict: Gateway) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(strict))
    started = time.monotonic()
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"model":'
    )
    try:
        assert await health_ok(strict)
        async with asyncio.timeout(CUT_BOUND):
            answer = await reader.read()
        elapsed = time.monotonic() - started
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408")
    assert b'"code":"request_timeout"' in answer.replace(b" ", b"")
    assert elapsed >= BODY_TIMEOUT * 0.9  # read() returned at EOF: the gateway closed the connection


# --- refused requests whose bodies never come -------------------------------------------------

# aiohttp reads and discards an unread body for 10 s (its lingering time) after the answer, and
# the keyed gateway's body deadline is the default 15 s: a close within this bound is neither; it
# is Sluice's short linger (http_protocol.REFUSED_BODY_LINGER, 2 s) and a margin for a loaded machine.
CLOSE_BOUND = 6.0
REFUSED_CAP = 20
DECLARED = 1_000_000  # bytes each refused request declares; it sends one


@pytest.fixture(scope="module")
def keyed_capped(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Gateway keys, and a small connection cap."""
    env = {"SLUICE_CONNECTIONS_MAX_CONNECTIONS": str(REFUSED_CAP)}
    gateway = start_keyed_gateway(tmp_path_factory.mktemp("keyed-capped"), simulator, env=env)
    yield gateway
    gateway.process.stop()


def declaring_head(path: str, *headers: str, length: int = DECLARED) -> bytes:
    """A POST to `path` declaring a body of `length` bytes, and its first byte."""
    extra = "".join(f"{header}\r\n" for header in headers)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n"
    return (head + extra + "\r\n{").encode()


async def refused(gateway: Gateway, request: bytes) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    """Send `request` on a new connection and nothing more; the answer's head, and the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gateway))
    writer.write(request)
    async with asyncio.timeout(CUT_BOUND):
        return await reader.readuntil(b"\r\n\r\n"), reader, writer


async def seconds_until_closed(reader: asyncio.StreamReader) -> float:
    """Seconds until the gateway closes the connection (bounded far over aiohttp's 10 s of lingering)."""
    answered = time.monotonic()
    async with asyncio.timeout(CUT_BOUND):
        await reader.read()
    return time.monotonic() - answered


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (declaring_head("/v1/chat/completions"), 401),
        (declaring_head("/v1/chat/completions", f"Authorization: Bearer {KEY_ALPHA}", length=2 * MIB), 413),
        (declaring_head("/nowhere", f"Authorization: Bearer {KEY_ALPHA}"), 404),
        (declaring_head("/health"), 405),
    ],
    ids=["no-key", "too-large", "unmatched", "open-route"],
)
async def test_a_refused_request_whose_body_never_comes_is_answered_and_its_connection_closed_after_a_short_linger(
    keyed_capped: Gateway, request_bytes: bytes, status: int
) -> None:
    # aiohttp went on reading the body after the answer for 10 s, the connection busy all along.
    head, reader, writer = await refused(keyed_capped, request_bytes)
    try:
        until_closed = await seconds_until_closed(reader)
    finally:
        writer.close()

    assert head.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"Connection: close" in head
    assert until_closed < CLOSE_BOUND


@pytest.mark.parametrize(
    ("path", "status", "code"), [("/v1/chat/completions", 401, "invalid_api_key"), ("/nowhere", 404, "not_found")]
)
async def test_a_client_still_sending_a_refused_body_gets_the_whole_answer(
    keyed_capped: Gateway, path: str, status: int, code: str
) -> None:
    # Closed soon, its connection must still carry the answer first: the client is mid-upload.
    # Whether a client sees the reset of a connection closed under its upload before it reads its
    # answer is a race: what the gateway read is asserted instead (tests/support/refused_upload.py).
    body = b'{"messages": "' + b"x" * (MIB - 100) + b'"}'
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    upload = await upload_refused_half_way(keyed_capped.url, head.encode(), body, CUT_BOUND)

    assert upload.answer.startswith(f"HTTP/1.1 {status} ".encode())
    assert json.loads(upload.answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == code
    assert (upload.tail, upload.unwritten) == (b"", 0)
    assert upload.closed == CLOSED_IN_ORDER


async def test_a_late_bodys_408_closes_its_connection_after_a_short_linger(strict: Gateway) -> None:
    head, reader, writer = await refused(strict, declaring_head("/v1/chat/completions"))
    try:
        until_closed = await seconds_until_closed(reader)
    finally:
        writer.close()

    assert head.startswith(b"HTTP/1.1 408 ")
    assert until_closed < CLOSE_BOUND  # not another 10 s of reading a body that was already too late


async def test_keyless_requests_whose_bodies_never_come_cannot_fill_the_connection_cap(keyed_capped: Gateway) -> None:
    # One packet per connection: each refused, then kept busy for 10 s, and the cap was full for
    # everyone, keyed clients included (503 too_many_connections). Lingering now, each is closed
    # first by a request over the cap: every attacker's request is answered (401), never 503.
    statuses, attackers = [], []
    try:
        for _ in range(2 * REFUSED_CAP):
            head, _, writer = await refused(keyed_capped, declaring_head("/v1/chat/completions"))
            statuses.append(head.split(b" ", 2)[1])
            attackers.append(writer)  # the attacker's end stays open: only the gateway closes
        async with (
            aiohttp.ClientSession() as http,
            http.get(keyed_capped.url + "/v1/models", headers=bearer(KEY_ALPHA)) as r,
        ):
            served = r.status
    finally:
        for writer in attackers:
            writer.close()

    assert set(statuses) == {b"401"}
    assert served == 200


# --- connection cap ----------------------------------------------------------------------------


async def test_a_request_over_the_cap_closes_the_longest_open_idle_connections_and_is_served(
    simulator: Simulator,
) -> None:
    # A flood of connections that send nothing held the cap until header_timeout (10 s by default)
    # and every request meanwhile got 503: the cheapest denial of service there is.
    env = {"SLUICE_CONNECTIONS_MAX_CONNECTIONS": str(CONNECTION_CAP), "SLUICE_CONNECTIONS_HEADER_TIMEOUT": "120"}
    gateway = start_gateway(upstream=simulator, env=env)
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(IDLE_CONNECTIONS):
            idle.append(await asyncio.open_connection("127.0.0.1", port_of(gateway)))
        async with aiohttp.ClientSession() as http, http.get(gateway.url + "/models") as r:
            assert r.status == 200
        # Over the cap by all but the cap's worth: the oldest ones went, at once (the header timeout is 120 s).
        for reader, _ in idle[: IDLE_CONNECTIONS - CONNECTION_CAP + 1]:
            async with asyncio.timeout(CUT_BOUND):
                assert await reader.read() == b""
        newest_reader, newest_writer = idle[-1]
        newest_writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(CUT_BOUND):
            assert (await newest_reader.readline()).startswith(b"HTTP/1.1 200")
    finally:
        for _, writer in idle:
            writer.close()
        gateway.process.stop()


async def test_a_burst_over_the_cap_takes_the_room_of_the_idle_connections_and_only_the_rest_get_503(
    simulator: Simulator,
) -> None:
    # Each request of a burst counted the idle connections an earlier one had just closed: all but
    # the first found no room, and up to the whole burst was refused while the idle ones went anyway.
    env = {"SLUICE_CONNECTIONS_MAX_CONNECTIONS": str(CAP_OF_THE_BURST), "SLUICE_CONNECTIONS_HEADER_TIMEOUT": "120"}
    gateway = start_gateway(upstream=simulator, env=env)
    request = json.dumps({"message": "burst\n#sim tokens=100000 gap_ms=20"}).encode()
    head = (
        "POST /chat/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(request)}\r\n\r\n"
    )
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    burst: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(IDLE_BEFORE_THE_BURST):  # kept alive after an answer: open, and waiting for a request
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gateway))
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            idle.append((reader, writer))
        gateway.process.signal(signal.SIGSTOP)  # the whole burst is in the kernel when it goes on
        try:
            for _ in range(BURST_OVER_THE_CAP):
                reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gateway))
                writer.write(head.encode() + request)
                await writer.drain()
                burst.append((reader, writer))
        finally:
            gateway.process.signal(signal.SIGCONT)
        statuses = []
        async with asyncio.timeout(CUT_BOUND):
            for reader, _ in burst:
                statuses.append((await reader.readline()).split(b" ")[1])
            for reader, _ in idle:  # all closed for the burst: each read ends
                await reader.read()
        assert sorted(statuses) == [b"200"] * CAP_OF_THE_BURST + [b"503"] * (BURST_OVER_THE_CAP - CAP_OF_THE_BURST), (
            str(statuses)
        )
    finally:
        for _, writer in idle + burst:
            writer.close()
        gateway.process.stop()


async def test_requests_over_the_cap_of_busy_connections_get_503_and_saturate_readiness_then_recover(
    simulator: Simulator,
) -> None:
    gateway = start_gateway(upstream=simulator, env={"SLUICE_CONNECTIONS_MAX_CONNECTIONS": str(BUSY_CAP)})
    body = {"message": "busy\n#sim tokens=100000 gap_ms=20"}
    rids = [new_request_id(f"busy-{n}") for n in range(BUSY_CAP)]
    busy = [open_unread_stream(gateway.url, "/chat/stream", body, rid) for rid in rids]
    try:
        async with aiohttp.ClientSession() as http:
            for rid in rids:  # every connection has its request in progress
                await sim_wait(http, simulator.url, rid, "opened")
            async with http.get(gateway.url + "/readyz") as r:
                assert r.status == 503
                assert (await r.json())["status"] == "saturated"
            async with http.get(gateway.url + "/models") as r:
                assert r.status == 503
                assert r.headers["Retry-After"] == "5"
                assert (await r.json())["error"]["code"] == "too_many_connections"
            async with http.get(gateway.url + "/health") as r:
                assert r.status == 200
            for client in busy:
                client.close()
            busy.clear()
            async with asyncio.timeout(CUT_BOUND):
                while True:  # the gateway notices the closes as it reads them; bounded, no fixed sleep
                    async with http.get(gateway.url + "/readyz") as r:
                        if r.status == 200:
                            break
                    await asyncio.sleep(0.05)
            async with http.get(gateway.url + "/models") as r:
                assert r.status == 200
    finally:
        for client in busy:
            client.close()
        gateway.process.stop()


def test_the_open_file_limit_is_raised_to_the_hard_limit_at_start_up(simulator: Simulator) -> None:
    # With systemd's soft limit of 1,024 the connection cap would default to 512.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (LOW_SOFT_LIMIT, hard))  # inherited by the gateway
    try:
        gateway = start_gateway(upstream=simulator)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    with gateway:
        gateway_soft, gateway_hard = psutil.Process(gateway.process.pid).rlimit(psutil.RLIMIT_NOFILE)

    assert (gateway_soft, gateway_hard) == (hard, hard)


def test_the_descriptor_table_is_grown_at_start_up_for_every_connection_the_cap_allows(simulator: Simulator) -> None:
    # Grown while serving, Linux's table doubles at 128, 256, 512... descriptors, and in a process
    # with threads each doubling stops the loop for an RCU grace period (the streams-1k TTFT tail).
    with start_gateway(upstream=simulator, env={"SLUICE_CONNECTIONS_MAX_CONNECTIONS": str(CONNECTION_CAP)}) as gateway:
        status = Path(f"/proc/{gateway.process.pid}/status").read_text()

    table = int(next(line.split()[1] for line in status.splitlines() if line.startswith("FDSize:")))
    assert table >= 2 * CONNECTION_CAP  # a client and an upstream socket each


# --- hostile upstreams -------------------------------------------------------------------------


def rss(gateway: Gateway) -> int:
    return int(psutil.Process(gateway.process.pid).memory_info().rss)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/chat/stream", {"message": "endless-line"}),
        (
            "/v1/chat/completions",
            {"model": "gpt-4o", "messages": [{"role": "user", "content": "endless-line"}], "stream": True},
        ),
    ],
    ids=["native", "openai"],
)
async def test_an_endless_upstream_line_ends_the_stream_with_an_explicit_error_and_bounded_memory(
    facing_hostile: Gateway, hostile: Simulator, path: str, body: dict[str, object]
) -> None:
    before = rss(facing_hostile)
    closed_before = sum("hostile stream closed" in line for line in hostile.process.lines)
    async with aiohttp.ClientSession() as http, http.post(facing_hostile.url + path, json=body) as r:
        assert r.status == 200
        events = await read_events(r)
    last = events[-1].json()
    assert last["error"]["code"] == "upstream_event_too_large"
    assert not any(e.data == "[DONE]" for e in events)
    hostile.process.wait_for_line(
        lambda line: (
            "hostile stream closed" in line
            and sum("hostile stream closed" in seen for seen in hostile.process.lines) > closed_before
        )
    )
    # The line is cut at 1 MiB: growth stays a few MiB, never the hundreds an unbounded buffer reached.
    assert rss(facing_hostile) - before < 64 * MIB


async def test_an_endless_line_before_any_token_ends_with_the_same_explicit_error(facing_hostile: Gateway) -> None:
    # The upstream accepted the request, so the stream may have started (200, then a final event)
    # or not (an HTTP error); either way the code says what happened.
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "endless-first"}], "stream": True}
    async with aiohttp.ClientSession() as http, http.post(facing_hostile.url + "/v1/chat/completions", json=body) as r:
        if r.status == 200:
            error = (await read_events(r))[-1].json()["error"]
        else:
            assert r.status == 502
            error = (await r.json())["error"]
    assert error["code"] == "upstream_event_too_large"


async def test_a_huge_non_streaming_reply_is_502_counted_after_decompression(facing_hostile: Gateway) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "bomb"}]}
    before = rss(facing_hostile)
    async with aiohttp.ClientSession() as http, http.post(facing_hostile.url + "/v1/chat/completions", json=body) as r:
        assert r.status == 502
        assert (await r.json())["error"]["code"] == "upstream_reply_too_large"
    assert rss(facing_hostile) - before < 32 * MIB  # the whole reply is 64 MiB once decompressed


async def test_a_stream_cut_after_only_one_of_two_choices_finished_ends_with_an_error(facing_hostile: Gateway) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "n2-cut"}], "stream": True, "n": 2}
    async with aiohttp.ClientSession() as http, http.post(facing_hostile.url + "/v1/chat/completions", json=body) as r:
        events = await read_events(r)
    assert events[-1].json()["error"]["code"] == "upstream_stream_broken"
    assert not any(e.data == "[DONE]" for e in events)


async def test_malformed_upstream_chunks_are_counted_in_the_log_and_a_metric(gateway: Gateway) -> None:
    rid = new_request_id("malformed")
    async with aiohttp.ClientSession() as http:
        async with http.post(
            gateway.url + "/chat/stream",
            json={"message": "x\n#sim tokens=4 fault=malformed"},
            headers={"X-Request-ID": rid},
        ) as r:
            await r.read()
        finished = gateway.process.wait_for_event("request_finished", request_id=rid)
        async with http.get(gateway.url + "/metrics") as r:
            metrics = await r.text()
    assert finished["malformed_chunks"] >= 1
    assert 'sluice_upstream_chunks_malformed_total{route="/chat/stream"}' in metrics


async def start_detached(http: aiohttp.ClientSession, gateway: Gateway, message: str, rid: str) -> dict[str, str]:
    """POST /chat/streams with `message` under request id `rid`; the new stream (`id`, `url`)."""
    headers = {"X-Request-ID": rid}
    async with http.post(gateway.url + "/chat/streams", json={"message": message}, headers=headers) as r:
        assert r.status == 201
        created: dict[str, str] = await r.json()
    return created


async def observe(http: aiohttp.ClientSession, simulator: Simulator, rid: str) -> dict[str, object]:
    """The simulator's record of `rid` after OBSERVATION_SECONDS in which it must not end."""
    params = {"until": "closed", "timeout": str(OBSERVATION_SECONDS)}
    async with http.get(f"{simulator.url}/_sim/requests/{rid}", params=params) as r:
        record: dict[str, object] = await r.json()
    assert record["timed_out"]
    return record


# --- unread browser streams --------------------------------------------------------------------


async def test_a_stream_of_many_small_events_is_held_back_before_its_unread_events_are_dropped(
    simulator: Simulator,
) -> None:
    # Counted in bytes alone, 100 kept events of ~70 bytes were dropped unread long before the
    # 4 MiB budget filled, and a reader arriving late got 410 instead of the stream.
    tokens = 600
    gateway = start_gateway(upstream=simulator, env={"SLUICE_BROWSER_MAX_BUFFERED_EVENTS": "100"})
    rid = new_request_id("many-small")
    try:
        async with aiohttp.ClientSession() as http:
            created = await start_detached(http, gateway, f"x\n#sim tokens={tokens} gap_ms=1", rid)
            # Held back (the fix), or finished with most of its events dropped (the bug).
            gateway.process.wait_for_line(
                lambda _: any(
                    e.get("request_id") == rid
                    for e in gateway.process.events("browser_stream_held_back")
                    + gateway.process.events("browser_stream_finished")
                )
            )
            async with http.get(gateway.url + created["url"]) as reader:
                assert reader.status == 200
                events = await read_events(reader)
    finally:
        gateway.process.stop()
    assert sum(e.event == "token" for e in events) == tokens
    assert events[-1].event == "done"


async def test_a_resume_past_the_end_does_not_release_the_hold_back(simulator: Simulator) -> None:
    # A Last-Event-ID past the end is the client's claim. Taken as read at each of its reader's
    # wakes, it let the stream run on with nobody reading; its first events were then dropped
    # before its real reader came (410).
    gateway = start_gateway(upstream=simulator, env={"SLUICE_BROWSER_MAX_BUFFERED_EVENTS": "100"})
    rid = new_request_id("claimed-ahead")
    try:
        async with aiohttp.ClientSession() as http:
            created = await start_detached(http, gateway, "x\n#sim tokens=300 gap_ms=1", rid)
            gateway.process.wait_for_event("browser_stream_held_back", request_id=rid)
            claim = await http.get(gateway.url + created["url"], headers={"Last-Event-ID": f"{created['id']}:100000"})
            assert claim.status == 200
            # Held back, the stream cannot finish while only the claim is attached.
            with pytest.raises(AssertionError, match="timed out"):
                gateway.process.wait_for_event("browser_stream_finished", timeout=2, request_id=rid)
            async with http.get(gateway.url + created["url"]) as reader:
                assert reader.status == 200
                events = await read_events(reader)
            claim.close()
    finally:
        gateway.process.stop()
    assert sum(e.event == "token" for e in events) == 300
    assert events[-1].event == "done"


async def test_a_never_read_detached_stream_holds_its_upstream_back(simulator: Simulator) -> None:
    gateway = start_gateway(
        upstream=simulator,
        env={"SLUICE_BROWSER_MAX_BUFFERED_BYTES": str(64 * 1024), "SLUICE_UPSTREAM_IDLE_TIMEOUT": "120"},
    )
    rid = new_request_id("unread")
    tokens = 2_000_000
    try:
        async with aiohttp.ClientSession() as http:
            created = await start_detached(http, gateway, f"x\n#sim tokens={tokens} gap_ms=0", rid)
            # The gateway says it stopped reading, and the simulator's writes then block.
            gateway.process.wait_for_event("browser_stream_held_back", request_id=rid, timeout=60)
            await sim_wait(http, simulator.url, rid, "paused", seconds=60)
            # Proving that nothing moves takes observation windows: long-poll for an end that must
            # not come, twice (the first lets the socket buffers fill), and compare what was sent.
            settled = await observe(http, simulator, rid)
            paused = await observe(http, simulator, rid)
            assert paused["paused"] is True
            held = int(str(paused["chunks_sent"]))
            assert held == int(str(settled["chunks_sent"])) < tokens
            before = rss(gateway)
            # A reader takes the held events; the generation then reads on: it gets more tokens
            # than the upstream had sent while held back.
            async with http.get(gateway.url + created["url"]) as reader:
                assert reader.status == 200
                seen = 0
                async for line in reader.content:
                    seen += line.startswith(b"event: token")
                    if seen > held:
                        break
            assert seen > held
            async with http.delete(gateway.url + created["url"]) as r:
                assert r.status == 204
            closed = await sim_wait(http, simulator.url, rid, "closed")
            assert closed["outcome"] == "client_aborted"
            assert rss(gateway) - before < 32 * MIB
    finally:
        gateway.process.stop()


# --- the byte budget across browser streams, while they grow ------------------------------------

KEPT_BUDGET = 1_000_000
BURST_TOKENS = 100_000  # megabytes of events each: a stream read on would run to its end within the grace
BURST = 150  # streams started at once, as in the review
BURST_GRACE_SECONDS = 15.0


async def start_keyed(http: aiohttp.ClientSession, gateway: Gateway, key: str, message: str, rid: str) -> int:
    """POST /chat/streams with `key` under request id `rid`; the status (201, or 503 for the budget)."""
    headers = {"X-Request-ID": rid, **bearer(key)}
    async with http.post(gateway.url + "/chat/streams", json={"message": message}, headers=headers) as r:
        if r.status == 503:
            assert (await r.json())["error"]["code"] == "overloaded"
        return r.status


def held_back(gateway: Gateway, rids: set[str]) -> list[dict[str, object]]:
    """The `browser_stream_held_back` lines of the streams started as `rids`."""
    return [e for e in gateway.process.events("browser_stream_held_back") if e.get("request_id") in rids]


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_a_burst_of_unread_streams_stays_within_the_byte_budget_as_they_grow_and_the_grace_ends_them(
    simulator: Simulator, tmp_path: Path, request: pytest.FixtureRequest, store: str
) -> None:
    # The black-box review: 150 streams started at once, before their first token, all passed the
    # budget (checked at the start only), then each kept ~363 kB: 54.5 MB against 2 MB, RSS +223 MB.
    env = {
        "SLUICE_BROWSER_MAX_KEPT_BYTES": str(KEPT_BUDGET),
        "SLUICE_BROWSER_READER_GRACE_SECONDS": str(BURST_GRACE_SECONDS),
        # Held back, they end by the grace period alone; the busy simulator's first tokens come late.
        "SLUICE_UPSTREAM_IDLE_TIMEOUT": "120",
        "SLUICE_UPSTREAM_FIRST_TOKEN_TIMEOUT": "60",
    }
    if store == "redis":
        env["SLUICE_REDIS_URL"] = request.getfixturevalue("redis_server").url
    gateway = start_keyed_gateway(tmp_path, simulator, env=env)
    try:
        before = rss(gateway)
        # A connection each: none is reused after the gateway closed it idle.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True)) as http:
            rids = [new_request_id(f"burst-{n}") for n in range(BURST)]
            message = f"x\n#sim tokens={BURST_TOKENS} gap_ms=0 ttft_ms=800"
            statuses = await asyncio.gather(*(start_keyed(http, gateway, KEY_ALPHA, message, rid) for rid in rids))
            admitted = {rid for rid, status in zip(rids, statuses, strict=True) if status == 201}
            assert set(statuses) == {201, 503}
            # Each live stream reserves room for one upstream read at its start.
            assert len(admitted) <= KEPT_BUDGET // RESERVE + 1

            # Every admitted stream grows until the store holds the budget, then stops reading its upstream.
            gateway.process.wait_for_line(lambda _: len(held_back(gateway, admitted)) >= len(admitted), timeout=60)
            # Each line says what the store held when that stream stopped; the last one stored is in the largest.
            kept = max(int(str(e["kept_bytes"])) for e in held_back(gateway, admitted))
            growth = rss(gateway) - before

            # Another key still starts a stream, and it runs to its end without being held back.
            other = new_request_id("burst-other")
            assert await start_keyed(http, gateway, KEY_FROM_ENV, "x\n#sim tokens=50", other) == 201
            finished = gateway.process.wait_for_event("browser_stream_finished", request_id=other)

            # Nobody reads the burst: the grace period ends every stream, its upstream never read to the end.
            closed = await asyncio.gather(*(sim_wait(http, simulator.url, rid, "closed", 60) for rid in admitted))
    finally:
        gateway.process.stop()
    # The budget, and at most one upstream read's events (under RESERVE) per stream past it.
    assert KEPT_BUDGET <= kept <= KEPT_BUDGET + len(admitted) * RESERVE
    assert growth < 64 * MIB
    assert finished["outcome"] == "completed"
    assert not held_back(gateway, {other})
    assert {record["outcome"] for record in closed} == {"client_aborted"}
    assert max(int(record["chunks_sent"]) for record in closed) < BURST_TOKENS
    abandoned = {e["stream_id"] for e in gateway.process.events("browser_stream_abandoned")}
    assert len(abandoned) == len(admitted)
