"""The simulator's aiohttp application and its OpenAI-compatible routes."""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Sequence
from dataclasses import replace
from uuid import uuid4

from aiohttp import web

from .answer import build_answer
from .chat_request import BadRequest, parse_chat_request
from .completion import complete_answer
from .connection import cut_connection, hang_until_shutdown
from .control import get_attempts, get_stats, reset_stats, wait_for_request
from .errors import error_response, status_fault_response, unauthorized
from .keys import RUNTIME_KEY, SETTINGS_KEY, STATS_KEY
from .plan import Fault, PlanError
from .runtime import Runtime
from .settings import DEFAULT_MODELS, Pace, SimulatorSettings
from .stats import Outcome, StatsRegistry
from .streaming import stream_answer

MODEL_CREATED = 1700000000
MODEL_OWNER = "sluice-simulator"
# Echo tests push large prompts through; aiohttp's default is 1 MiB.
MAX_BODY_BYTES = 32 * 1024 * 1024


def create_simulator_app(
    defaults: Pace | None = None,
    models: Sequence[str] = DEFAULT_MODELS,
    api_key: str | None = None,
    control: bool = False,
) -> web.Application:
    """Build a simulated OpenAI-compatible chat API.

    defaults: pacing when a request does not steer it.
    models: ids listed by GET /v1/models (chat accepts any model name).
    api_key: when set, /v1/* requires `Authorization: Bearer <api_key>`.
    control: add the test-only `/_sim/*` routes (stats, a request's record, reset).
    """
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[SETTINGS_KEY] = SimulatorSettings.build(defaults, models, api_key)
    app[STATS_KEY] = StatsRegistry()
    app[RUNTIME_KEY] = Runtime()
    app.on_shutdown.append(_wake_hanging_requests)
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/chat/completions", chat_completions)
    if control:
        app.router.add_get("/_sim/stats", get_stats)
        app.router.add_get("/_sim/requests/{request_id}", wait_for_request)
        app.router.add_get("/_sim/attempts/{request_id}", get_attempts)
        app.router.add_post("/_sim/reset", reset_stats)
    return app


async def list_models(request: web.Request) -> web.Response:
    """GET /v1/models."""
    settings = request.app[SETTINGS_KEY]
    if (denied := _check_auth(request, settings.api_key)) is not None:
        return denied
    data = [
        {
            "id": model,
            "object": "model",
            "created": MODEL_CREATED,
            "owned_by": MODEL_OWNER,
        }
        for model in settings.models
    ]
    return web.Response(
        body=json.dumps({"object": "list", "data": data}).encode(),
        content_type="application/json",
    )


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions, streamed or not, with steering and faults."""
    settings = request.app[SETTINGS_KEY]
    if (denied := _check_auth(request, settings.api_key)) is not None:
        return denied
    try:
        raw = await request.read()
        chat = parse_chat_request(raw)
        answer = build_answer(chat, settings.defaults, request.app[RUNTIME_KEY].next_completion_id())
    except BadRequest as exc:
        return error_response(400, exc.message, param=exc.param)
    except PlanError as exc:
        return error_response(400, str(exc), param=f"sim.{exc.key}")

    stats = request.app[STATS_KEY]
    request_id = request.headers.get("X-Request-ID") or f"simreq-{uuid4().hex}"
    record = stats.open(request_id, chat.model, chat.stream)
    record.last_role = chat.last_role
    record.body = raw
    plan = answer.plan
    fault = plan.fault_for(request.app[RUNTIME_KEY].attempt(request_id), chat.model)
    if plan.prefill_fault is not Fault.NONE and chat.last_role == "assistant":
        fault = plan.prefill_fault
    if fault is not plan.fault:
        answer = replace(answer, plan=replace(plan, fault=fault))
    if plan.reject_prefill and chat.last_role == "assistant":
        stats.close(record, Outcome.FAULT)
        return error_response(400, "simulated: assistant prefill is not supported", code="invalid_prefill")
    if fault in (Fault.RESET, Fault.SILENT):
        if fault is Fault.SILENT:
            try:
                await hang_until_shutdown(request)
            except asyncio.CancelledError:
                stats.close(record, Outcome.CLIENT_ABORTED)
                raise
        stats.close(record, Outcome.FAULT)
        cut_connection(request)
        return web.Response()
    if (failure := status_fault_response(fault, plan.retry_after)) is not None:
        stats.close(record, Outcome.FAULT)
        return failure
    respond = stream_answer if chat.stream else complete_answer
    try:
        return await respond(request, answer, record)
    except asyncio.CancelledError:
        # The client left (aiohttp cancels the handler); note it, never swallow it.
        stats.close(record, Outcome.CLIENT_ABORTED)
        raise
    finally:
        # Safety net for unexpected errors; a no-op once the responder closed it.
        stats.close(record, Outcome.FAULT)


def _check_auth(request: web.Request, api_key: str | None) -> web.Response | None:
    """None when allowed, else the 401 to send."""
    if api_key is None:
        return None
    supplied = request.headers.get("Authorization", "")
    scheme, _, token = supplied.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return unauthorized("missing bearer token in Authorization header")
    if not hmac.compare_digest(_raw(token.strip()), _raw(api_key)):
        return unauthorized("incorrect API key provided")
    return None


async def _wake_hanging_requests(app: web.Application) -> None:
    app[RUNTIME_KEY].shutting_down.set()


def _raw(text: str) -> bytes:
    # surrogatepass: header values may carry surrogate escapes; never raise.
    return text.encode("utf-8", "surrogatepass")
