"""A browser stream's routing has the time an attached stream's has, and its log line names the attempts.

`first_token_timeout` is per attempt.
The guard of a detached stream used to cut the whole routing at `first_token_timeout`, so a
routing still waiting out an upstream's Retry-After (or moving on to a slower candidate) ended
the browser stream with `first_token_timeout` where `/chat/stream` answered. The gateway runs
in-process in front of a fake upstream that answers 429 with a Retry-After longer than that
timeout once, then streams.
"""

from __future__ import annotations

from aiohttp import web

from tests.support.sse import read_events
from tests.test_middleware import AccessLog, access_log
from tests.test_upstream_errors import COMPLETIONS, BuildGateway

__all__ = ["access_log"]  # a fixture, used by name

STREAM = (
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":"late"},"finish_reason":null}]}\n\n'
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o",'
    b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    b"data: [DONE]\n\n"
)


def limited_once() -> web.Application:
    """An upstream that answers its first request 429 with Retry-After: 1, then streams."""
    calls: list[int] = []

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        calls.append(1)
        if len(calls) == 1:
            return web.json_response(
                {"error": {"message": "Slow down.", "code": None}}, status=429, headers={"Retry-After": "1"}
            )
        return web.Response(body=STREAM, headers={"Content-Type": "text/event-stream"})

    app = web.Application()
    app.router.add_post(COMPLETIONS, answer)
    return app


async def test_a_browser_stream_waits_out_a_retry_after_longer_than_the_first_token_timeout(
    upstream_app_client: BuildGateway,
) -> None:
    gateway = await upstream_app_client(
        limited_once(),
        upstream={"first_token_timeout": 0.5},
        routing={"retries": 1, "retry_budget_seconds": 5.0},
    )
    started = await gateway.post("/chat/streams", json={"message": "hi"})
    assert started.status == 201

    async with gateway.get((await started.json())["url"]) as response:
        events = [event for event in await read_events(response) if event.data]

    assert [event.event for event in events] == ["token", "done"]
    assert events[0].json()["content"] == "late"


async def test_a_browser_streams_log_line_names_its_attempts_and_who_answered(
    upstream_app_client: BuildGateway, access_log: AccessLog
) -> None:
    gateway = await upstream_app_client(limited_once(), routing={"retries": 1, "retry_budget_seconds": 5.0})
    started = await gateway.post("/chat/streams", json={"message": "hi"})
    async with gateway.get((await started.json())["url"]) as response:
        await read_events(response)

    # Logged as the generation ends, which its reader's `done` may come before.
    [finished] = await access_log.finished(1, "browser_stream_finished")
    assert [attempt["status"] for attempt in finished["attempts"]] == [429, 200]
    assert (finished["upstream"], finished["served_model"]) == ("default", "gpt-4o")
