"""An upstream that ends its answers badly on purpose, as its own process: `python -m tests.support.cut_upstream`.

Written on raw sockets, so that it can cut a chunked body or reset its connection where a test
wants. The last user message's content picks the behaviour (a request whose last message is the
assistant's, a continuation, gets a normal short stream of `t3` whatever it is):
- `finish-usage-reset`: the role chunk, `t0 t1 t2`, the finish chunk (`stop`), the usage chunk
  (when the request asked for usage), then the connection is reset (RST), no `[DONE]`;
- `finish-usage-cut`: the same, then the connection is closed (FIN) in the middle of the chunked body;
- `finish-cut`: the role chunk, `t0 t1 t2`, the finish chunk, then the chunked body is cut (no usage);
- `n2-finish-cut`: two choices, each with a token and its finish, then the chunked body is cut;
- `n2-half-cut`: two choices, choice 0 finishes, choice 1 has a token and no finish, then the cut;
- `tokens-cut`: the role chunk, `t0 t1 t2`, then the cut, before any finish;
- `newline-json-error`: 200 `application/json`, a `\\n` alone, then (another write) an error object;
- `html`: 200 `text/html` with a page;
- `html-events`: a whole normal stream, labelled `text/html` (a web framework's default type);
- anything else: a whole normal stream of `t0 t1 t2`.
It prints `cut upstream listening on http://127.0.0.1:PORT`, then one JSON line per request:
`{"event": "cut_upstream_request", "mode": ..., "request_id": ..., "continuation": ...}`.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any

from tests.support.upstream_process import run, serve_connections

ERROR_MESSAGE = "model overloaded, try again later"
ERROR_CODE = "model_overloaded"
# Apart by this much, the `\n` and the JSON after it reach the gateway in two reads (loopback).
WRITE_APART_SECONDS = 0.2
USAGE = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}


def _event(choices: list[dict[str, Any]], usage: dict[str, int] | None = None, *, with_usage: bool) -> bytes:
    body: dict[str, Any] = {
        "id": "chatcmpl-cut",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o",
        "choices": choices,
    }
    if with_usage:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _choice(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def _answer_events(mode: str, continuation: bool, with_usage: bool) -> list[bytes]:
    """The events of the stream `mode` sends, in order, before it ends (whole or cut)."""

    def one(choices: list[dict[str, Any]]) -> bytes:
        return _event(choices, None, with_usage=with_usage)

    role = one([_choice(0, {"role": "assistant", "content": ""})])
    usage = [_event([], USAGE, with_usage=True)] if with_usage else []
    if continuation:
        return [role, one([_choice(0, {"content": " t3"})]), one([_choice(0, {}, "stop")]), *usage]
    tokens = [one([_choice(0, {"content": text})]) for text in ("t0", " t1", " t2")]
    finish = one([_choice(0, {}, "stop")])
    if mode == "tokens-cut":
        return [role, *tokens]
    if mode == "finish-cut":
        return [role, *tokens, finish]
    if mode in ("n2-finish-cut", "n2-half-cut"):
        two = [one([_choice(0, {"role": "assistant"}), _choice(1, {"role": "assistant"})])]
        two += [one([_choice(0, {"content": "a"})]), one([_choice(1, {"content": "b"})])]
        two.append(one([_choice(0, {}, "stop")]))
        if mode == "n2-finish-cut":
            two += [one([_choice(1, {}, "stop")]), *usage]
        return two
    return [role, *tokens, finish, *usage]


async def _answer(writer: asyncio.StreamWriter, body: dict[str, Any]) -> None:
    messages = body.get("messages") or [{}]
    continuation = messages[-1].get("role") == "assistant"
    mode = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
    with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    if mode == "newline-json-error" and not continuation:
        error = json.dumps({"error": {"message": ERROR_MESSAGE, "type": "server_error", "code": ERROR_CODE}})
        payload = error.encode()
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (len(payload) + 1)
        writer.write(head + b"\n")
        await writer.drain()
        await asyncio.sleep(WRITE_APART_SECONDS)
        writer.write(payload)
        await writer.drain()
        return
    if mode == "html" and not continuation:
        page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n" % len(page) + page)
        await writer.drain()
        return
    kind = b"text/html; charset=utf-8" if mode == "html-events" else b"text/event-stream"
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: " + kind + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
    for event in _answer_events(mode, continuation, with_usage):
        writer.write(_chunked(event))
        await writer.drain()
    cut = mode in ("finish-usage-reset", "finish-usage-cut", "finish-cut", "n2-finish-cut", "n2-half-cut", "tokens-cut")
    if continuation or not cut:
        writer.write(_chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()
        return
    if mode == "finish-usage-reset":
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
    else:
        writer.write(b"2")  # the start of a chunk's size line: the chunked body is cut inside its framing
        await writer.drain()
    writer.close()


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            headers = {}
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            body = json.loads(await reader.readexactly(int(headers.get(b"content-length", b"0"))))
            messages = body.get("messages") or [{}]
            print(
                json.dumps(
                    {
                        "event": "cut_upstream_request",
                        "mode": next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), ""),
                        "request_id": headers.get(b"x-request-id", b"").decode(),
                        "continuation": messages[-1].get("role") == "assistant",
                    }
                ),
                flush=True,
            )
            await _answer(writer, body)
            if writer.is_closing():
                return
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def serve(port: int) -> None:
    """Listen on `port` (0: any free one) until the process is stopped."""
    await serve_connections("cut upstream", _serve, port)


if __name__ == "__main__":
    run(serve)
