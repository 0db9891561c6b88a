"""An upstream whose fault the request names, as its own process: `python -m tests.support.header_fault_upstream`.

The last message's content, as `key=value` words, picks the answer:
- `status=N` with any other words as response headers (`retry-after=99999999`): status N and an
  OpenAI error body;
- `encoding=gzip` (or `deflate`): a 200 marked with that Content-Encoding whose body does not decode;
- anything else: a whole chat completion, or a two-event stream when `"stream": true`.
Served under `/v1` and under `/<name>/v1` for any name, so several `[[upstreams]]` can point at one
process; `GET /_seen` lists every chat request as `{"upstream": name, "content": content}` (name
`default` under the bare `/v1`), and `GET .../v1/models` answers 200 (the breakers' probe).
It prints `header fault upstream listening on http://127.0.0.1:PORT`.
"""

from __future__ import annotations

import json

from aiohttp import web

from tests.support.upstream_process import run, serve_app

SEEN = web.AppKey("seen", list[dict[str, str]])
COMPLETION = {
    "id": "c",
    "object": "chat.completion",
    "model": "gpt-4o",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
}


def _event(delta: dict[str, str], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    body = {"id": "c", "object": "chat.completion.chunk", "model": "gpt-4o", "choices": [choice]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


async def completions(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    content = body["messages"][-1]["content"]
    request.app[SEEN].append({"upstream": request.match_info.get("name", "default"), "content": content})
    words = dict(word.partition("=")[::2] for word in content.split() if "=" in word)
    if "status" in words:
        status = int(words.pop("status"))
        error = {"error": {"message": "fault on purpose", "type": "fault", "code": None}}
        return web.json_response(error, status=status, headers=words)
    if (encoding := words.get("encoding")) is not None:
        headers = {"Content-Encoding": encoding, "Content-Type": "application/json"}
        return web.Response(body=b"this body is not " + encoding.encode(), headers=headers)
    if not body.get("stream"):
        return web.json_response(COMPLETION)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for data in (_event({"content": "ok"}), _event({}, "stop"), b"data: [DONE]\n\n"):
        await response.write(data)
    await response.write_eof()
    return response


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": "gpt-4o", "object": "model"}]})


async def seen(request: web.Request) -> web.Response:
    return web.json_response(request.app[SEEN])


async def serve(port: int) -> None:
    """Listen on `port` (0: any free one) until the process is stopped."""
    app = web.Application()
    app[SEEN] = []
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_post("/{name}/v1/chat/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/{name}/v1/models", models)
    app.router.add_get("/_seen", seen)
    await serve_app("header fault upstream", app, port)


if __name__ == "__main__":
    run(serve)
