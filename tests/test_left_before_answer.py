"""A key whose client leaves a completion while its upstream works on it is charged its whole reservation.

Charged its prompt alone, a key ran six requests of max_tokens 5000 past its tpm by leaving each just
before its answer, while the upstream generated nearly all of it (a provider bills that). The
gateway runs in-process, keyed, in front of a fake upstream that never answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web

from server.app import create_app
from server.auth.limits import KeyLimits
from server.keys import LIMITS
from tests.conftest import AiohttpClient, make_settings
from tests.support.security import bearer
from tests.test_middleware import AccessLog, access_log
from tests.test_security_units import KEY, keyed_settings

__all__ = ["access_log"]  # a fixture, used by name

COMPLETIONS = "/v1/chat/completions"
TPM = 6000  # refills 100 tokens a second: a charge of 5,000 stays visible for the test's length
RESERVED = 5000


async def test_a_completion_left_while_its_upstream_works_is_charged_its_reservation(
    aiohttp_server: Callable[..., Any], aiohttp_client: AiohttpClient, access_log: AccessLog
) -> None:
    asked = asyncio.Event()

    async def working(request: web.Request) -> web.Response:
        await request.read()
        asked.set()
        await asyncio.Event().wait()  # generating, until Sluice closes the connection
        raise AssertionError("unreachable")

    upstream = web.Application()
    upstream.router.add_post(COMPLETIONS, working)
    server = await aiohttp_server(upstream)
    environ = {
        "AI_INTEGRATIONS_OPENAI_API_KEY": "sk-upstream",
        "AI_INTEGRATIONS_OPENAI_BASE_URL": str(server.make_url("/v1")),
    }
    gateway = await aiohttp_client(create_app(make_settings(environ, auth=keyed_settings(tpm=TPM))))
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": RESERVED,
    }

    leaving = asyncio.create_task(gateway.post(COMPLETIONS, json=body, headers=bearer(KEY)))
    await asked.wait()
    leaving.cancel()  # the client leaves
    await access_log.finished(1)  # settled before its line is written

    usage = await gateway.app[LIMITS].usage("unit", KeyLimits(tpm=TPM))
    assert usage is not None
    assert usage.tokens >= RESERVED - 300  # less what refilled since (100 tokens a second, 3 s of slack)
