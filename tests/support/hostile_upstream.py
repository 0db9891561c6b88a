"""An upstream that misbehaves on purpose, as its own process: `python -m tests.support.hostile_upstream`.

The last message's content picks the behaviour:
- `endless-line`: one token, then one SSE line that never ends, sent as fast as the reader takes it;
- `endless-first`: the endless line before any token;
- `bomb`: a non-streaming reply of 64 MiB that travels gzip-compressed (about 64 KiB);
- `n2-cut`: with two choices, choice 0 finishes, choice 1 sends a token, then the body ends;
- `echo-auth`: a normal short stream whose text is the Authorization header it received;
- `reasoning:FIELD`: the role chunk, one delta of FIELD alone (`reasoning_content`, `reasoning`:
  text; `audio`: an audio object), then nothing more until the client leaves;
- `tool-call`: the role chunk, the first delta of a tool call (no content), then nothing more until
  the client leaves;
- `reasoning-long`: twenty `reasoning_content` deltas a quarter of a second apart, then an answer;
- `one-choice`: one choice whatever `n` asked for (as Ollama streams), its finish chunk and
  `[DONE]` in one write;
- `finish-then-hold`: a token and its finish chunk, then neither `[DONE]` nor the body's end until
  the client leaves;
- anything else: a normal two-token stream.
It prints `hostile upstream listening on http://127.0.0.1:PORT` and, when a stream ends,
`hostile stream closed sent=BYTES`.
"""

from __future__ import annotations

import asyncio
import gzip
import json

from aiohttp import web

from tests.support.upstream_process import run, serve_app

LINE_PIECE = b"x" * 65536


REASONING_GAP_SECONDS = 0.25
REASONING_DELTAS = 20


def _chunk(
    index: int, content: str | None = None, finish: str | None = None, delta: dict[str, object] | None = None
) -> bytes:
    if delta is None:
        delta = {"content": content} if content is not None else {}
    choice = {"index": index, "delta": delta, "finish_reason": finish}
    body = {"id": "c", "object": "chat.completion.chunk", "model": "gpt-4o", "choices": [choice]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


async def completions(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    mode = body["messages"][-1]["content"]
    if mode == "bomb":
        reply = json.dumps({"choices": [{"message": {"content": "x" * (64 << 20)}}]}).encode()
        return web.Response(
            body=gzip.compress(reply, compresslevel=1),
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    sent = 0
    try:
        if mode in ("endless-line", "endless-first"):
            if mode == "endless-line":
                await response.write(_chunk(0, "before"))
            await response.write(b"data: ")
            while True:
                await response.write(LINE_PIECE)
                sent += len(LINE_PIECE)
        elif mode.startswith("reasoning:"):
            field = mode.removeprefix("reasoning:")
            value = {"id": "audio_1", "data": "AAAA", "transcript": "hm"} if field == "audio" else "thinking"
            for data in (_chunk(0, delta={"role": "assistant"}), _chunk(0, delta={field: value})):
                await response.write(data)
                sent += len(data)
            await asyncio.Event().wait()  # until the client leaves (the handler is cancelled)
        elif mode == "tool-call":
            call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
            for data in (_chunk(0, delta={"role": "assistant"}), _chunk(0, delta={"tool_calls": [call]})):
                await response.write(data)
                sent += len(data)
            await asyncio.Event().wait()  # until the client leaves (the handler is cancelled)
        elif mode == "reasoning-long":
            await response.write(_chunk(0, delta={"role": "assistant", "content": ""}))
            for step in range(REASONING_DELTAS):
                await asyncio.sleep(REASONING_GAP_SECONDS)
                await response.write(_chunk(0, delta={"reasoning_content": f"step {step}. "}))
            for data in (_chunk(0, "answer"), _chunk(0, None, "stop"), b"data: [DONE]\n\n"):
                await response.write(data)
        elif mode == "one-choice":
            for data in (_chunk(0, delta={"role": "assistant"}), _chunk(0, "ok")):
                await response.write(data)
            await response.write(_chunk(0, None, "stop") + b"data: [DONE]\n\n")
        elif mode == "finish-then-hold":
            await response.write(_chunk(0, "ok") + _chunk(0, None, "stop"))
            await asyncio.Event().wait()
        elif mode == "n2-cut":
            for data in (_chunk(0, "a"), _chunk(1, "b"), _chunk(0, None, "stop"), _chunk(1, "c")):
                await response.write(data)
                sent += len(data)
        else:
            text = request.headers.get("Authorization", "") if mode == "echo-auth" else "ok"
            for data in (_chunk(0, text), _chunk(0, None, "stop"), b"data: [DONE]\n\n"):
                await response.write(data)
                sent += len(data)
        await response.write_eof()
    finally:
        print(f"hostile stream closed sent={sent}", flush=True)
    return response


async def serve(port: int) -> None:
    """Listen on `port` (0: any free one) until the process is stopped."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    await serve_app("hostile upstream", app, port, handler_cancellation=True)


if __name__ == "__main__":
    run(serve)
