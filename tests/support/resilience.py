"""Helpers for resilience tests: a gateway on a config of its own, a steered chat, the upstream's attempts."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.processes import Gateway, Simulator, start_gateway
from tests.support.sse import Event, openai_text, read_events

BASE_CONFIG = """
[logging]
format = "json"
[upstream]
connect_timeout = 2.0
header_timeout = 2.0
first_token_timeout = 5.0
idle_timeout = 5.0
total_timeout = 60.0
"""


def prefill_upstream(name: str, base_url: str, extra: str = "") -> str:
    """Config of one upstream at `base_url` that declares assistant-prefill continuation (plus `extra` lines)."""
    return f"""
[[upstreams]]
name = "{name}"
base_url = "{base_url}"
continuation = "assistant-prefill"
{extra}"""


FALLBACK_CONFIG = """
[routing]
fallbacks = { "gpt-4o" = ["gpt-4o-mini"] }
context_window_fallbacks = { "gpt-4o" = ["gpt-4.1"] }
"""


def gateway_with(tmp: Path, name: str, simulator: Simulator, extra: str = "", **env: str) -> Gateway:
    """A gateway on the default routing settings, plus `extra` TOML and `env`."""
    path = tmp / f"{name}.toml"
    path.write_text(BASE_CONFIG + extra)
    return start_gateway(upstream=simulator, config=str(path), env=env)


async def ask(gateway: Gateway, directive: str, rid: str, *, model: str = "gpt-4o") -> tuple[int, list[Event], Any]:
    """Stream a /v1 chat with a `#sim` directive; the status, the events (or the error body)."""
    body = {"model": model, "messages": [{"role": "user", "content": f"hi\n#sim {directive}"}], "stream": True}
    async with aiohttp.ClientSession() as http:
        async with http.post(gateway.url + "/v1/chat/completions", json=body, headers={"X-Request-ID": rid}) as r:
            if r.status != 200:
                return r.status, [], {"body": await r.json(), "headers": dict(r.headers)}
            return r.status, await read_events(r), None


async def attempts(simulator: Simulator, rid: str) -> list[dict[str, Any]]:
    """Every attempt of `rid` the simulator saw, oldest first."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{simulator.url}/_sim/attempts/{rid}") as response:
            found: list[dict[str, Any]] = (await response.json())["attempts"]
            return found


def gaps(seen: list[dict[str, Any]]) -> list[float]:
    """Seconds between one attempt's end and the next one's start."""
    return [b["opened_at"] - a["closed_at"] for a, b in itertools.pairwise(seen)]


def completed(events: list[Event], tokens: int) -> bool:
    """A whole OpenAI-dialect stream: `tokens` words, no error event, then [DONE]."""
    return (
        events[-1].data == "[DONE]"
        and not any('"error"' in e.data for e in events)
        and len(openai_text(events).split()) == tokens
    )
