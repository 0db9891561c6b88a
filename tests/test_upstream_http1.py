"""Sluice's own upstream HTTP/1.1 client: the parser, the pooled connections, TLS, and its failures.

Against a raw loopback server in this process (tests/support/raw_upstream.py), so every byte of
every answer is the test's.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from server.errors import UpstreamError
from server.settings import UpstreamEntry
from server.upstreams.backoff import retryable, tries_next_candidate
from server.upstreams.client import UpstreamClient
from server.upstreams.connections import Connections
from server.upstreams.http1 import Http1Connection
from server.upstreams.parser import MAX_HEAD_BYTES, MalformedResponse, ResponseParser
from server.upstreams.response import BOM
from server.upstreams.stream import UpstreamStream
from tests.conftest import RawClient, make_settings
from tests.support.garbage import cyclic_garbage
from tests.support.raw_upstream import (
    FINISH,
    LAST_CHUNK,
    STREAM_HEAD,
    RawUpstream,
    chunk,
    json_reply,
    token,
)

SECONDS = 10  # a bound far from any real wait here
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
# The smallest reply the client takes for a chat completion (server/upstreams/failures.py, check_completion).
COMPLETION = b'{"choices": [{"message": {}}]}'


def test_a_chunked_body_split_at_every_byte_boundary_parses_the_same() -> None:
    body = token(1) + token(2) + FINISH
    reply = STREAM_HEAD + chunk(token(1)) + chunk(token(2) + FINISH) + b"1;ext=1\r\n\n\r\n" + LAST_CHUNK
    whole = body + b"\n"
    for at in range(len(reply) + 1):
        parser = ResponseParser()
        received = parser.feed(reply[:at]) + parser.feed(reply[at:])

        assert (received, parser.complete, parser.keep_alive) == (whole, True, True), f"split at {at}"


def test_a_chunked_body_fed_one_byte_at_a_time_parses_the_same() -> None:
    reply = STREAM_HEAD + chunk(token(1)) + chunk(FINISH) + LAST_CHUNK
    parser = ResponseParser()

    received = b"".join(parser.feed(reply[at : at + 1]) for at in range(len(reply)))

    assert received == token(1) + FINISH
    assert parser.complete


def test_a_second_response_in_the_same_read_is_not_taken_into_the_first() -> None:
    """Bytes nobody asked for after a response: the connection is not reused, and the response keeps its own."""
    parser = ResponseParser()
    first = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    second = b"HTTP/1.1 500 X\r\nContent-Length: 3\r\nRetry-After: 9\r\n\r\nabc"

    body = parser.feed(first + second)

    assert (body, parser.status, dict(parser.headers)) == (b"hi", 200, {"content-length": "2"})
    assert not parser.keep_alive


def test_a_head_larger_than_the_limit_is_refused() -> None:
    parser = ResponseParser()
    line = b"X-Padding: " + b"x" * 990 + b"\r\n"
    fed = len(b"HTTP/1.1 200 OK\r\n")
    parser.feed(b"HTTP/1.1 200 OK\r\n")
    while fed + len(line) <= MAX_HEAD_BYTES:
        parser.feed(line)
        fed += len(line)
    with pytest.raises(MalformedResponse):
        parser.feed(line)


def test_only_the_headers_sluice_reads_are_kept() -> None:
    """A provider's cookies and timings would live as long as the stream: they are dropped.

    Its request id is kept for the access line, which takes it out of the headers (client.py).
    """
    parser = ResponseParser()
    parser.feed(
        b"HTTP/1.1 200 OK\r\nX-Request-Id: req_1\r\nSet-Cookie: a=b\r\nOpenAI-Processing-Ms: 12\r\n"
        b"Content-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )

    assert dict(parser.headers) == {"transfer-encoding": "chunked", "x-request-id": "req_1"}


def test_header_names_are_found_whatever_their_case() -> None:
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 429 Too Many\r\nRetry-After-Ms: 1500\r\nContent-Length: 0\r\n\r\n")

    assert parser.headers.get("retry-after-ms") == "1500"
    assert parser.headers.get("RETRY-AFTER-MS") == "1500"
    assert parser.complete


async def test_a_content_length_body_ends_at_its_length_and_the_connection_is_reused(
    raw_upstream: RawUpstream, raw_client: RawClient
) -> None:
    client = raw_client(raw_upstream.url)
    replies = []
    for n in range(3):
        sent = asyncio.ensure_future(client.complete(CHAT, f"rid-{n}"))
        exchange = await raw_upstream.next()
        exchange.write(json_reply(b'{"choices": [{"message": {}}], "n": %d}' % n))
        async with asyncio.timeout(SECONDS):
            replies.append(await sent)

    assert replies == [b'{"choices": [{"message": {}}], "n": %d}' % n for n in range(3)]
    assert raw_upstream.connections == 1


async def test_the_request_carries_its_head_and_body(raw_upstream: RawUpstream, raw_client: RawClient) -> None:
    sent = asyncio.ensure_future(raw_client(raw_upstream.url).complete(CHAT, "the-rid"))
    exchange = await raw_upstream.next()
    exchange.write(json_reply(COMPLETION))
    async with asyncio.timeout(SECONDS):
        await sent

    lines = exchange.head.decode().split("\r\n")
    assert lines[0] == "POST /v1/chat/completions HTTP/1.1"
    assert {"Authorization: Bearer k", "X-Request-ID: the-rid", "Accept: application/json"} <= set(lines)
    assert not any(line.lower().startswith("accept-encoding") for line in lines)
    assert exchange.body == b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}'


async def test_a_close_delimited_body_ends_when_the_upstream_closes(
    raw_upstream: RawUpstream, raw_client: RawClient
) -> None:
    client = raw_client(raw_upstream.url)
    sent = asyncio.ensure_future(client.complete(CHAT, "rid"))
    exchange = await raw_upstream.next()
    exchange.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + b'{"choices": [{"message": {}}], "a":'
    )
    exchange.write(b' "b"}')
    exchange.close()
    async with asyncio.timeout(SECONDS):
        reply = await sent

    assert reply == b'{"choices": [{"message": {}}], "a": "b"}'


async def test_a_redirect_is_not_followed_but_fails_as_upstream_failed(
    raw_upstream: RawUpstream, raw_client: RawClient
) -> None:
    sent = asyncio.ensure_future(raw_client(raw_upstream.url).complete(CHAT, "rid"))
    exchange = await raw_upstream.next()
    exchange.write(
        b"HTTP/1.1 302 Found\r\nLocation: " + raw_upstream.url.encode() + b"/elsewhere\r\nContent-Length: 0\r\n\r\n"
    )

    with pytest.raises(UpstreamError) as failure:
        async with asyncio.timeout(SECONDS):
            await sent
    assert (failure.value.status, failure.value.code, failure.value.reason) == (502, "upstream_failed", "302")
    assert raw_upstream.requests.empty()


async def test_a_reply_whose_head_never_ends_is_refused(raw_upstream: RawUpstream, raw_client: RawClient) -> None:
    sent = asyncio.ensure_future(raw_client(raw_upstream.url).complete(CHAT, "rid"))
    exchange = await raw_upstream.next()
    exchange.write(b"HTTP/1.1 200 OK\r\n" + b"X-Padding: " + b"x" * (2 * MAX_HEAD_BYTES))

    with pytest.raises(UpstreamError) as failure:
        async with asyncio.timeout(SECONDS):
            await sent
    assert (failure.value.code, failure.value.reason) == ("upstream_malformed_reply", "malformed_reply")


async def test_a_completion_cut_short_after_its_head_is_a_malformed_reply_for_another_upstream(
    raw_upstream: RawUpstream, raw_client: RawClient
) -> None:
    """Asked again, the same upstream would generate, and bill, the whole completion again."""
    sent = asyncio.ensure_future(raw_client(raw_upstream.url).complete(CHAT, "rid"))
    exchange = await raw_upstream.next()
    exchange.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + COMPLETION)
    exchange.close()

    with pytest.raises(UpstreamError) as failure:
        async with asyncio.timeout(SECONDS):
            await sent
    assert (failure.value.status, failure.value.code) == (502, "upstream_malformed_reply")
    assert (retryable(failure.value), tries_next_candidate(failure.value)) == (False, True)
    assert raw_upstream.requests.empty()


async def test_a_response_cut_inside_its_head_is_a_malformed_reply(
    raw_upstream: RawUpstream, raw_client: RawClient
) -> None:
    sent = asyncio.ensure_future(raw_client(raw_upstream.url).complete(CHAT, "rid"))
    exchange = await raw_upstream.next()
    exchange.write(b"HTTP/1.1 200 OK\r\nContent-Ty")
    exchange.close()

    with pytest.raises(UpstreamError) as failure:
        async with asyncio.timeout(SECONDS):
            await sent
    assert failure.value.reason == "malformed_reply"
    assert raw_upstream.requests.empty()


MALFORMED_HEADS = {
    "folded_header": b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: %d\r\n\r\n",
    "bare_lf": b"HTTP/1.1 200 OK\nContent-Length: %d\n\n",
    "two_lengths": b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Length: 1\r\n\r\n",
    "length_and_chunked": b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n",
}


@pytest.mark.parametrize("head", MALFORMED_HEADS.values(), ids=list(MALFORMED_HEADS))
@pytest.mark.parametrize("stream", [False, True], ids=["completion", "stream"])
async def test_a_response_that_is_not_valid_http_is_a_malformed_reply_not_an_unreachable_upstream(
    raw_upstream: RawUpstream, raw_client: RawClient, head: bytes, stream: bool
) -> None:
    client = raw_client(raw_upstream.url)
    sent = asyncio.ensure_future(client.open_stream(CHAT, "rid") if stream else client.complete(CHAT, "rid"))
    (await raw_upstream.next()).write(head % len(COMPLETION) + COMPLETION)

    with pytest.raises(UpstreamError) as failure:
        async with asyncio.timeout(SECONDS):
            await sent
    assert (failure.value.code, failure.value.reason) == ("upstream_malformed_reply", "malformed_reply")


async def test_a_completion_after_a_byte_order_mark_is_relayed_without_it(
    raw_upstream: RawUpstream, raw_client: RawClient
) -> None:
    sent = asyncio.ensure_future(raw_client(raw_upstream.url).complete(CHAT, "rid"))
    (await raw_upstream.next()).write(json_reply(BOM + COMPLETION))

    async with asyncio.timeout(SECONDS):
        assert await sent == COMPLETION


async def test_an_error_after_a_byte_order_mark_passes_its_message_on(
    raw_upstream: RawUpstream, raw_client: RawClient
) -> None:
    sent = asyncio.ensure_future(raw_client(raw_upstream.url).complete(CHAT, "rid"))
    (await raw_upstream.next()).write(json_reply(BOM + b'{"error": {"message": "Unknown parameter."}}', 400))

    with pytest.raises(UpstreamError) as failure:
        async with asyncio.timeout(SECONDS):
            await sent
    assert (failure.value.status, failure.value.message) == (400, "Unknown parameter.")


async def test_a_pooled_connection_that_fails_before_its_answer_is_retried_once_on_a_fresh_one(
    raw_upstream: RawUpstream, raw_client: RawClient
) -> None:
    client = raw_client(raw_upstream.url)
    first = asyncio.ensure_future(client.complete(CHAT, "first"))
    (await raw_upstream.next()).write(json_reply(COMPLETION))
    async with asyncio.timeout(SECONDS):
        await first
    second = asyncio.ensure_future(client.complete(CHAT, "second"))
    on_the_pooled_one = await raw_upstream.next()
    on_the_pooled_one.close()  # as an upstream whose keep-alive ran out just as the request came
    on_a_fresh_one = await raw_upstream.next()
    on_a_fresh_one.write(json_reply(b'{"choices": [{"message": {}}], "ok": true}'))
    async with asyncio.timeout(SECONDS):
        reply = await second

    assert reply == b'{"choices": [{"message": {}}], "ok": true}'
    assert (on_the_pooled_one.connection, on_a_fresh_one.connection) == (1, 2)


async def test_a_fresh_connection_that_fails_before_its_answer_is_not_retried(
    raw_upstream: RawUpstream, raw_client: RawClient
) -> None:
    sent = asyncio.ensure_future(raw_client(raw_upstream.url).complete(CHAT, "rid"))
    (await raw_upstream.next()).close()

    with pytest.raises(UpstreamError) as failure:
        async with asyncio.timeout(SECONDS):
            await sent
    assert failure.value.reason == "connect"
    assert raw_upstream.requests.empty()
    assert raw_upstream.connections == 1


async def test_a_stream_whose_upstream_closes_mid_body_ends_with_a_reset_failure(
    raw_upstream: RawUpstream, raw_client: RawClient
) -> None:
    opening = asyncio.ensure_future(raw_client(raw_upstream.url).open_stream(CHAT, "rid"))
    exchange = await raw_upstream.next()
    exchange.write(STREAM_HEAD + chunk(token(1)))
    async with asyncio.timeout(SECONDS):
        stream = await opening
    exchange.write(chunk(token(2))[:-3])  # a chunk cut short
    exchange.close()
    texts: list[str | None] = []
    with pytest.raises(UpstreamError) as failure:
        await _read_into(texts, stream)
    stream.close()

    assert texts == ["t1"]
    assert failure.value.reason == "reset"


async def test_a_stream_left_mid_body_leaves_no_cycle_for_the_collector(
    raw_upstream: RawUpstream, raw_client: RawClient
) -> None:
    """A client that leaves closes the upstream mid-body; its response parser is freed by reference counting.

    httptools' parser holds the callbacks of Sluice's: a cycle until the connection's end breaks it.
    Catches: the release in `Http1Connection.connection_lost` removed (server/upstreams/http1.py).
    """
    with cyclic_garbage() as garbage:
        opening = asyncio.ensure_future(raw_client(raw_upstream.url).open_stream(CHAT, "rid"))
        exchange = await raw_upstream.next()
        exchange.write(STREAM_HEAD + chunk(token(1)))
        async with asyncio.timeout(SECONDS):
            stream = await opening
        stream.close()  # as the relay does when its client leaves
        async with asyncio.timeout(SECONDS):
            await raw_upstream.closed.get()  # the connection's end was handled before the upstream saw it
        del stream, opening

    assert [o for o in garbage if isinstance(o, ResponseParser)] == []


async def test_a_malformed_answer_leaves_no_cycle_for_the_collector(
    raw_upstream: RawUpstream, raw_client: RawClient
) -> None:
    """The parser's error, raised in the connection's data callback, is kept as a copy without its traceback.

    Catches: the connection keeping the raised error itself (server/upstreams/http1.py, `_fail`).
    """
    with cyclic_garbage() as garbage:
        sent = asyncio.ensure_future(raw_client(raw_upstream.url).complete(CHAT, "rid"))
        exchange = await raw_upstream.next()
        exchange.write(b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n")
        with pytest.raises(UpstreamError):
            async with asyncio.timeout(SECONDS):
                await sent
        async with asyncio.timeout(SECONDS):
            await raw_upstream.closed.get()  # the connection's end was handled before the upstream saw it
        del sent

    assert [type(o).__name__ for o in garbage if isinstance(o, (Http1Connection, ResponseParser))] == []


async def test_once_the_headers_came_a_stream_waits_for_its_first_token_past_the_header_deadline(
    raw_upstream: RawUpstream, upstream_connections: Connections
) -> None:
    # A reasoning model answers its headers at once and thinks for minutes: the header deadline
    # must give way to the (longer) first-token deadline, not cut the stream.
    header_timeout = 0.2
    upstream = make_settings(upstream={"header_timeout": header_timeout, "first_token_timeout": SECONDS}).upstream
    entry = UpstreamEntry(name="thinking", base_url=raw_upstream.url, api_key=None)
    accepted = asyncio.Event()
    opening = asyncio.ensure_future(
        UpstreamClient(entry, upstream_connections, upstream).open_stream(CHAT, "rid", on_accepted=accepted.set)
    )
    exchange = await raw_upstream.next()
    exchange.write(STREAM_HEAD)
    async with asyncio.timeout(SECONDS):
        await accepted.wait()
    await asyncio.wait({opening}, timeout=3 * header_timeout)  # a window the header deadline falls in
    assert not opening.done()
    exchange.write(chunk(token(1)))
    async with asyncio.timeout(SECONDS):
        stream = await opening
    stream.close()


async def test_a_compressed_stream_is_refused_as_upstream_encoding_unsupported(
    raw_upstream: RawUpstream, raw_client: RawClient
) -> None:
    opening = asyncio.ensure_future(raw_client(raw_upstream.url).open_stream(CHAT, "rid"))
    exchange = await raw_upstream.next()
    exchange.write(STREAM_HEAD.replace(b"\r\n\r\n", b"\r\nContent-Encoding: gzip\r\n\r\n") + chunk(b"\x1f\x8b"))

    with pytest.raises(UpstreamError) as failure:
        async with asyncio.timeout(SECONDS):
            await opening
    assert (failure.value.status, failure.value.code) == (502, "upstream_encoding_unsupported")


async def _read_into(texts: list[str | None], stream: UpstreamStream) -> None:
    async with asyncio.timeout(SECONDS):
        async for batch in stream:
            texts.extend(chunk.content for chunk in batch)


async def test_a_stream_whose_upstream_closes_before_its_first_token_is_a_reset_failure(
    raw_upstream: RawUpstream, raw_client: RawClient
) -> None:
    opening = asyncio.ensure_future(raw_client(raw_upstream.url).open_stream(CHAT, "rid"))
    exchange = await raw_upstream.next()
    exchange.write(STREAM_HEAD)
    exchange.close()

    with pytest.raises(UpstreamError) as failure:
        async with asyncio.timeout(SECONDS):
            await opening
    assert failure.value.reason == "reset"


async def test_a_finished_stream_returns_its_connection_to_the_pool(
    raw_upstream: RawUpstream, raw_client: RawClient
) -> None:
    client = raw_client(raw_upstream.url)
    for n in range(2):
        opening = asyncio.ensure_future(client.open_stream(CHAT, f"rid-{n}"))
        exchange = await raw_upstream.next()
        exchange.write(STREAM_HEAD + chunk(token(n)) + chunk(FINISH) + LAST_CHUNK)
        async with asyncio.timeout(SECONDS):
            stream = await opening
            batches = [batch async for batch in stream]
        stream.close()
        assert [chunk.content for batch in batches for chunk in batch if chunk.content] == [f"t{n}"]

    assert raw_upstream.connections == 1
    assert client.in_flight == 0


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost and its key, made with openssl."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def _tls_reply(tmp_path: Path, trusted: bool) -> bytes:
    cert, key = _self_signed(tmp_path)
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    upstream = RawUpstream()
    await upstream.start(served, host="localhost")
    trust = ssl.create_default_context(cafile=str(cert)) if trusted else None
    connections = Connections(max_connections=0, connect_timeout=5, ssl_context=trust)
    entry = UpstreamEntry(name="tls", base_url=upstream.url, api_key=None)
    client = UpstreamClient(entry, connections, make_settings().upstream)
    try:
        sent = asyncio.ensure_future(client.complete(CHAT, "rid"))
        if trusted:
            (await upstream.next()).write(json_reply(b'{"choices": [{"message": {}}], "tls": true}'))
        async with asyncio.timeout(SECONDS):
            return await sent
    finally:
        await connections.close()
        await upstream.stop()


async def test_an_https_upstream_is_reached_with_its_certificate_verified(tmp_path: Path) -> None:
    assert await _tls_reply(tmp_path, trusted=True) == b'{"choices": [{"message": {}}], "tls": true}'


async def test_an_https_upstream_whose_certificate_is_not_trusted_is_unreachable(tmp_path: Path) -> None:
    with pytest.raises(UpstreamError) as failure:
        await _tls_reply(tmp_path, trusted=False)
    assert failure.value.reason == "connect"


async def test_an_untrusted_certificate_is_logged_with_the_tls_librarys_reason_not_an_errno(tmp_path: Path) -> None:
    """The TLS library's error kind (1) is no system errno: named by os.strerror, it read "Operation not permitted"."""
    with capture_logs() as logs, pytest.raises(UpstreamError):
        await _tls_reply(tmp_path, trusted=False)

    [line] = [entry for entry in logs if entry["event"] == "upstream_connect_failed"]
    assert line["error"] == "SSLCertVerificationError"
    assert line["reason"] in ("self-signed certificate", "self signed certificate")
    assert "errno" not in line


async def test_an_idle_pooled_connection_is_closed_after_its_idle_time(raw_upstream: RawUpstream) -> None:
    connections = Connections(max_connections=0, connect_timeout=5, idle_seconds=0.05)
    entry = UpstreamEntry(name="idle", base_url=raw_upstream.url, api_key=None)
    client = UpstreamClient(entry, connections, make_settings().upstream)
    try:
        sent = asyncio.ensure_future(client.complete(CHAT, "rid"))
        exchange = await raw_upstream.next()
        exchange.write(json_reply(COMPLETION))
        async with asyncio.timeout(SECONDS):
            await sent
            closed = await raw_upstream.closed.get()  # by the gateway: its idle time ran out
    finally:
        await connections.close()

    assert closed == exchange.connection


async def test_an_origin_is_looked_up_once_for_a_crowd_of_new_connections_and_then_kept(
    raw_upstream: RawUpstream, raw_client: RawClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    lookups: list[str] = []
    look_up = loop.getaddrinfo

    async def counted(host: str, *args: object, **kwargs: object) -> object:
        lookups.append(host)
        return await look_up(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "getaddrinfo", counted)
    client = raw_client(raw_upstream.url.replace("127.0.0.1", "localhost"))
    crowd = [asyncio.ensure_future(client.complete(CHAT, f"rid-{n}")) for n in range(3)]
    exchanges = [await raw_upstream.next() for _ in crowd]  # three connections at once
    later = asyncio.ensure_future(client.complete(CHAT, "later"))  # a fourth, while they are busy
    exchanges.append(await raw_upstream.next())
    for exchange in exchanges:
        exchange.write(json_reply(COMPLETION))
    async with asyncio.timeout(SECONDS):
        await asyncio.gather(*crowd, later)

    assert raw_upstream.connections == 4
    assert lookups == ["localhost"]
