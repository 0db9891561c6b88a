"""OpenAI-compatible servers that are not OpenAI, as its own process: `python -m tests.support.variety_upstream`.

Written on raw sockets, so every byte of every answer is its own. The request's model picks the
behaviour:
- `strict`: as Mistral's API, a 422 `{"object": "error", "message": {"detail": [...]}}` for any
  field outside the few every OpenAI-compatible server knows (`stream_options` and
  `max_completion_tokens` among them); else a two-token answer, streamed without usage;
- `bom`: a two-token answer, streamed (without its role chunk) or not, after a UTF-8 byte order mark;
- `llamacpp-error`: a stream holding only an older llama.cpp server's `error: {json}` line;
- `cut`: a non-streaming reply whose body ends, with the connection, before its Content-Length;
- anything else: 404 `model_not_found`.
`GET .../models` answers a list holding `listed-model`.
It prints `variety upstream listening on http://127.0.0.1:PORT`, then for each request one JSON
line: `{"event": "request_seen", "target": <method, path and query>, "request_id": ..., "body": <its JSON>}`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

BOM = b"\xef\xbb\xbf"
# What every OpenAI-compatible server takes (Mistral's list, less its own extensions).
KNOWN_FIELDS = frozenset(
    {"model", "messages", "stream", "temperature", "top_p", "max_tokens", "stop", "n", "tools", "tool_choice"}
)
LLAMACPP_ERROR = b'{"code":500,"message":"llama_decode failed: KV cache is full","type":"server_error"}'
TEXT = ("Hello", " world")


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {"id": "v1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": []}
    body["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
    return b"data: " + json.dumps(body).encode() + b"\n\n"


STREAM = (
    b"".join(
        [_chunk({"role": "assistant", "content": ""}), *(_chunk({"content": t}) for t in TEXT), _chunk({}, "stop")]
    )
    + b"data: [DONE]\n\n"
)
COMPLETION = json.dumps(
    {
        "id": "v1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(TEXT)}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
).encode()

MODELS = json.dumps({"object": "list", "data": [{"id": "listed-model", "object": "model"}]}).encode()


def reply(status: int, body: bytes, content_type: bytes = b"application/json", length: int | None = None) -> bytes:
    """A whole response with a Content-Length (`length`, when given, in place of the body's own)."""
    size = len(body) if length is None else length
    head = b"HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n" % (status, content_type, size)
    return head + body


def mistral_refusal(unknown: list[str], body: dict[str, Any]) -> bytes:
    """Mistral's 422 for fields it does not know: FastAPI's detail list inside the message."""
    detail = [
        {"type": "extra_forbidden", "loc": ["body", name], "msg": "Extra inputs are not permitted", "input": body[name]}
        for name in unknown
    ]
    error = {"object": "error", "message": {"detail": detail}, "type": "invalid_request_error", "code": None}
    return reply(422, json.dumps(error).encode())


def answer(target: str, body: dict[str, Any]) -> tuple[bytes, bool]:
    """The bytes that answer a request, and whether the connection stays open after them."""
    if target.startswith("GET ") and target.split("?")[0].endswith("/models"):
        return reply(200, MODELS), True
    model, stream = body.get("model"), body.get("stream") is True
    if model == "strict":
        if unknown := sorted(set(body) - KNOWN_FIELDS):
            return mistral_refusal(unknown, body), True
        return (reply(200, STREAM, b"text/event-stream") if stream else reply(200, COMPLETION)), True
    if model == "bom":
        # No role chunk first: the first event, the one a BOM hides, carries text.
        tokens = STREAM[STREAM.index(b"\n\n") + 2 :]
        return (reply(200, BOM + tokens, b"text/event-stream") if stream else reply(200, BOM + COMPLETION)), True
    if model == "llamacpp-error":
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
        return head + b"error: " + LLAMACPP_ERROR + b"\n\n", False
    if model == "cut":
        return reply(200, COMPLETION[:20], length=len(COMPLETION)), False
    missing = {"message": f"model {model!r} not found", "type": "invalid_request_error", "code": "model_not_found"}
    return reply(404, json.dumps({"error": missing}).encode()), True


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer each request on one connection until either side closes it."""
    try:
        while True:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            request_line, *header_lines = head.split("\r\n")
            headers = {
                name.strip().lower(): value.strip() for name, _, value in (h.partition(":") for h in header_lines)
            }
            raw = await reader.readexactly(int(headers.get("content-length") or 0))
            body = json.loads(raw) if raw else {}
            target = request_line.rsplit(" ", 1)[0]
            seen = {"event": "request_seen", "target": target, "request_id": headers.get("x-request-id"), "body": body}
            print(json.dumps(seen), flush=True)
            data, keep_open = answer(target, body)
            writer.write(data)
            await writer.drain()
            if not keep_open:
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(port: int) -> None:
    """Listen on `port` (0: any free one) until the process is stopped."""
    server = await asyncio.start_server(serve_connection, "127.0.0.1", port)
    print(f"variety upstream listening on http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
