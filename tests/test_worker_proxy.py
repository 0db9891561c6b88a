"""`python run.py --workers 2`: a browser stream's requests sent on purpose to the worker that does not own it.

Every worker also listens on its own Unix socket in the supervisor's peer directory; connecting
to a chosen worker's socket forces the request onto that worker, instead of leaving it to the
kernel's SO_REUSEPORT hashing. Stream ids name their owner (`w<index>_...`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil
import pytest

from tests.support.client import new_request_id, sim_wait
from tests.support.processes import ManagedProcess, Simulator, clean_env, free_port
from tests.support.sse import Event, iter_events, read_events

SEND_TIMEOUT = 1.0
BOUND = 0.5
FAR = {
    "SLUICE_UPSTREAM_FIRST_TOKEN_TIMEOUT": "60",
    "SLUICE_UPSTREAM_IDLE_TIMEOUT": "60",
    "SLUICE_UPSTREAM_TOTAL_TIMEOUT": "120",
    "SLUICE_STREAM_HEARTBEAT_INTERVAL": "60",
    "SLUICE_STREAM_SEND_TIMEOUT": str(SEND_TIMEOUT),
    # Every event of the flood below stays buffered: the owner's reader is never dropped for lagging.
    "SLUICE_BROWSER_MAX_BUFFERED_EVENTS": "300000",
    # An idle connection is closed two minutes on: far from the HTTP/1.0 test's bound.
    "SLUICE_CONNECTIONS_HEADER_TIMEOUT": "120",
}
# A three-token stream takes milliseconds.
END_SECONDS = 10

pytestmark = pytest.mark.timeout(60)


@dataclass
class Workers:
    """A running supervisor with two workers, and the way to reach each worker alone."""

    supervisor: ManagedProcess
    peer_dir: Path

    @asynccontextmanager
    async def session(self, index: int) -> AsyncIterator[aiohttp.ClientSession]:
        """A client session whose every request reaches worker `index` (over its Unix socket)."""
        connector = aiohttp.UnixConnector(path=str(self.peer_dir / f"worker-{index}.sock"))
        async with aiohttp.ClientSession("http://worker", connector=connector) as http:
            yield http

    def pid(self, index: int) -> int:
        """The process id of worker `index` now."""
        started = [e for e in self.supervisor.events("worker_started") if e["worker_index"] == index]
        return int(started[-1]["worker_pid"])

    def finished(self, request_id: str) -> list[dict[str, object]]:
        """The request_finished events logged for `request_id`, by any worker."""
        return [e for e in self.supervisor.events("request_finished") if e.get("request_id") == request_id]

    def stalled(self, request_id: str) -> list[dict[str, object]]:
        """The peer_client_stalled events for `request_id`: a relaying worker cut its stalled client."""
        return [e for e in self.supervisor.events("peer_client_stalled") if e.get("request_id") == request_id]


def start_workers(simulator: Simulator) -> Workers:
    env = clean_env(
        {"AI_INTEGRATIONS_OPENAI_API_KEY": "sk-x", "AI_INTEGRATIONS_OPENAI_BASE_URL": simulator.base_url, **FAR}
    )
    argv = [sys.executable, "run.py", "--port", str(free_port()), "--config", "config/test.toml", "--workers", "2"]
    supervisor = ManagedProcess(argv, env).start()
    supervisor.wait_for_line(lambda _: len(supervisor.events("sluice_listening")) >= 2)
    worker_argv = psutil.Process(supervisor.pid).children()[0].cmdline()
    peer_dir = Path(worker_argv[worker_argv.index("--peer-dir") + 1])
    return Workers(supervisor, peer_dir)


@pytest.fixture(scope="module")
def workers(simulator: Simulator) -> Iterator[Workers]:
    running = start_workers(simulator)
    yield running
    running.supervisor.stop()


async def start_on(workers: Workers, owner: int, message: str, request_id: str) -> str:
    """Start a stream on worker `owner`; its path."""
    async with workers.session(owner) as http:
        headers = {"X-Request-ID": request_id}
        async with http.post("/chat/streams", json={"message": message}, headers=headers) as response:
            assert response.status == 201
            body = await response.json()
    assert body["id"].startswith(f"w{owner}_")
    return str(body["url"])


def data_events(events: list[Event]) -> list[Event]:
    return [e for e in events if e.comment is None and e.data]


async def test_attaching_through_the_worker_that_does_not_own_the_stream_gets_every_event(workers: Workers) -> None:
    """Catches: `_owner_elsewhere` in server/routes/browser.py answering None (no relay): the
    non-owner does not know the stream and answers 204.
    """
    path = await start_on(workers, 0, "attach\n#sim tokens=5", new_request_id("peer-attach"))
    async with workers.session(0) as http, http.get(path) as response:
        direct = data_events(await read_events(response))

    async with workers.session(1) as http, http.get(path) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        relayed = data_events(await read_events(response))

    assert [(e.id, e.event, e.data) for e in relayed] == [(e.id, e.event, e.data) for e in direct]
    assert relayed[-1].event == "done"


async def test_resuming_through_the_worker_that_does_not_own_the_stream_continues_after_the_id_given(
    workers: Workers,
) -> None:
    """Catches: the relay dropping Last-Event-ID (server/worker_proxy.py): the owner replays from the start."""
    path = await start_on(workers, 1, "resume\n#sim tokens=8", new_request_id("peer-resume"))
    stream_id = path.rsplit("/", 1)[1]
    async with workers.session(0) as http:
        async with http.get(path, headers={"Last-Event-ID": f"{stream_id}:3"}) as response:
            events = await read_events(response)
    assert events[0].id == f"{stream_id}:3"  # the preamble names the resume point
    assert [e.id for e in data_events(events)] == [f"{stream_id}:{n}" for n in range(4, 10)]


async def test_stopping_through_the_worker_that_does_not_own_the_stream_closes_the_upstream(
    workers: Workers, simulator: Simulator
) -> None:
    """DELETE sent to the non-owner: the owner's upstream closes within half a second of the 204.

    Catches: delete_stream in server/routes/browser.py not relaying to the owner (it answers 204
    for a stream it does not know, and the generation runs on).
    """
    rid = new_request_id("peer-stop")
    path = await start_on(workers, 0, "stop\n#sim tokens=100000 gap_ms=20", rid)
    async with aiohttp.ClientSession() as sim:
        await sim_wait(sim, simulator.url, rid, "opened")
        async with workers.session(1) as http, http.delete(path) as response:
            assert response.status == 204
            answered = time.time()
        record = await sim_wait(sim, simulator.url, rid, "closed", seconds=5)
    assert record["outcome"] == "client_aborted"
    assert record["closed_at"] - answered < BOUND


async def test_a_client_that_stalls_behind_the_relaying_worker_is_cut_after_the_send_timeout(
    workers: Workers,
) -> None:
    """The relaying worker ends its request when its client accepts nothing, as the owner does.

    The owner logs the request's one request_finished when its send to the relaying worker times
    out; the relaying worker logs peer_client_stalled when its send to the client does. Catches: no
    send timeout on the relaying worker's writes (server/worker_proxy.py): it waits on its stalled
    client for ever and never logs.
    """
    rid = new_request_id("peer-stalled")
    path = await start_on(workers, 0, "flood\n#sim tokens=200000", new_request_id("peer-stalled-start"))
    try:
        async with workers.session(1) as http:
            async with http.get(path, headers={"X-Request-ID": rid}) as response:
                assert response.status == 200
                await asyncio.to_thread(
                    workers.supervisor.wait_for_line,
                    lambda _: bool(workers.finished(rid) and workers.stalled(rid)),
                    10 * SEND_TIMEOUT,
                )
        assert len(workers.finished(rid)) == 1
    finally:
        async with workers.session(0) as http, http.delete(path) as response:
            assert response.status == 204


async def test_a_killed_owner_gives_an_explicit_answer_not_a_hang(simulator: Simulator) -> None:
    """The owner dies: a client attached through the other worker sees its stream end, and a new
    request for the stream is answered 204 (EventSource stops), both without waiting on a deadline.

    The supervisor is paused (SIGSTOP) meanwhile, so no replacement takes the dead owner's socket.
    Catches: the relay letting an unreachable owner's connection error out (server/worker_proxy.py),
    a 500 instead of the 204.
    """
    workers = start_workers(simulator)
    rid = new_request_id("peer-killed")
    try:
        path = await start_on(workers, 0, "doomed\n#sim tokens=100000 gap_ms=20", new_request_id("peer-doomed"))
        async with workers.session(1) as http:
            async with http.get(path, headers={"X-Request-ID": rid}) as response:
                async for event in iter_events(response):
                    if event.event == "token":
                        break
                os.kill(workers.supervisor.pid, signal.SIGSTOP)
                os.kill(workers.pid(0), signal.SIGKILL)
                with pytest.raises(aiohttp.ClientPayloadError):
                    await asyncio.wait_for(read_events(response), 5)
            # The owner's sockets closed with it, so it is gone: its socket file refuses connections.
            async with asyncio.timeout(5), http.get(path) as response:
                assert response.status == 204
    finally:
        os.kill(workers.supervisor.pid, signal.SIGCONT)
        # Stop only once the replacement listens: a signal before it was started would leave it running.
        workers.supervisor.wait_for_line(lambda _: len(workers.supervisor.events("sluice_listening")) >= 3)
        workers.supervisor.stop()
    errors = [e for e in workers.supervisor.events() if e.get("level") in ("error", "critical")]
    assert errors == []


@pytest.mark.parametrize("path", ["/chat/streams/w7_nothing", "/chat/streams/w9999_nothing"])
async def test_a_stream_id_naming_a_worker_that_does_not_exist_is_answered_as_unknown(
    workers: Workers, path: str
) -> None:
    """Catches: a session opened for any worker index a client names (server/worker_proxy.py), up
    to 10,000 per worker, each kept, each request a `peer_unreachable` warning.
    """
    rid = new_request_id("no-such-worker")
    async with workers.session(0) as http, http.get(path, headers={"X-Request-ID": rid}) as response:
        assert response.status == 204
    workers.supervisor.wait_for_line(lambda _: bool(workers.finished(rid)))
    assert [e for e in workers.supervisor.events("peer_unreachable") if e.get("request_id") == rid] == []


async def test_a_forwarded_stream_to_an_http_1_0_keep_alive_client_ends_with_the_connection(
    workers: Workers,
) -> None:
    """HTTP/1.0 has no chunked framing: the relaying worker's answer ends with its connection.

    Catches: the relay (server/worker_proxy.py) keeping the connection open after the stream's end,
    as aiohttp does for a keep-alive request: the client waited for more.
    """
    path = await start_on(workers, 0, "short\n#sim tokens=3", new_request_id("peer-http-1-0"))
    reader, writer = await asyncio.open_unix_connection(str(workers.peer_dir / "worker-1.sock"))
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: worker\r\nConnection: keep-alive\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), END_SECONDS)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower().split(b"\r\n")
    assert b"event: done" in body
