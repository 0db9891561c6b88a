"""Hostile requests and what a keyed gateway must answer to each.

Every case names what it attacks. `status` is the only acceptable status (or a set of them);
every refusal must be the JSON error envelope, and no response may carry a key, the token
secret, a traceback, or an Access-Control-Allow-Origin for an origin that is not allowlisted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.support.security import KEY_ALPHA, KEY_NARROW, METRICS_KEY, ORIGIN, bearer

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi\n#sim tokens=1"}]}
NATIVE = {"message": "hi\n#sim tokens=1"}
JSON_KEY_ALPHA = {"Content-Type": "application/json", **bearer(KEY_ALPHA)}


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    status: int | frozenset[int]
    headers: dict[str, str] = field(default_factory=dict)
    json: Any = None
    data: bytes | None = None
    code: str | None = None
    # Header lines sent as they are over a raw socket (for what an HTTP client refuses to send).
    raw: bytes | None = None
    # False where aiohttp's HTTP parser answers before Sluice sees a request (plain text, no envelope).
    envelope: bool = True


def statuses(*codes: int) -> frozenset[int]:
    return frozenset(codes)


CASES: list[Case] = [
    # --- authentication ---
    Case("no key on /v1", "POST", "/v1/chat/completions", 401, json=CHAT, code="invalid_api_key"),
    Case("no key on /chat", "POST", "/chat", 401, json=NATIVE, code="invalid_api_key"),
    Case("no key on /chat/stream", "POST", "/chat/stream", 401, json=NATIVE, code="invalid_api_key"),
    Case("no key on /chat/streams", "POST", "/chat/streams", 401, json=NATIVE, code="invalid_api_key"),
    Case("no key on one-step GET", "GET", "/chat/stream?message=hi", 401),
    Case("no key on /models", "GET", "/models", 401),
    Case("HEAD on /models without a key", "HEAD", "/models", 401, envelope=False),
    Case("HEAD on /v1/models without a key", "HEAD", "/v1/models", 401, envelope=False),
    Case("HEAD on /metrics without its key", "HEAD", "/metrics", 401, envelope=False),
    Case("lower-case bearer scheme", "GET", "/models", 200, {"Authorization": f"bearer {KEY_ALPHA}"}),
    Case("api-key with a Bearer prefix", "GET", "/models", 401, {"api-key": f"Bearer {KEY_ALPHA}"}),
    Case("key in the api-key query parameter", "GET", f"/models?api-key={KEY_ALPHA}", 401),
    Case(
        "a browser token as a bearer key", "GET", "/models", 401, bearer("YWxwaGF8Y2hhdC1zdHJlYW18OTk5OTk5OTk5OQ.AAAA")
    ),
    Case("double slash path", "POST", "//v1/chat/completions", statuses(401, 404), json=CHAT),
    Case("encoded slash path", "POST", "/v1/chat%2Fcompletions", statuses(401, 404), json=CHAT),
    Case("no key on /v1/models", "GET", "/v1/models", 401),
    Case("no key on /v1/models/id", "GET", "/v1/models/gpt-4o", 401),
    Case("no key on the token route", "POST", "/chat/stream/token", 401),
    Case("empty bearer", "POST", "/v1/chat/completions", 401, {"Authorization": "Bearer "}, CHAT),
    Case("bare Bearer word", "POST", "/v1/chat/completions", 401, {"Authorization": "Bearer"}, CHAT),
    Case("basic scheme", "POST", "/v1/chat/completions", 401, {"Authorization": f"Basic {KEY_ALPHA}"}, CHAT),
    Case("key without a scheme", "POST", "/v1/chat/completions", 401, {"Authorization": KEY_ALPHA}, CHAT),
    Case("key in upper case", "POST", "/v1/chat/completions", 401, bearer(KEY_ALPHA.upper()), CHAT),
    Case("key with a suffix", "POST", "/v1/chat/completions", 401, bearer(KEY_ALPHA + "x"), CHAT),
    Case("key prefix only", "POST", "/v1/chat/completions", 401, bearer(KEY_ALPHA[:-1]), CHAT),
    Case("key's hash as the key", "POST", "/v1/chat/completions", 401, bearer("0" * 64), CHAT),
    Case("key in the query", "POST", f"/v1/chat/completions?api_key={KEY_ALPHA}", 401, json=CHAT),
    Case("key in the body", "POST", "/v1/chat/completions", 401, json={**CHAT, "api_key": KEY_ALPHA}),
    Case("token on a header-only route", "POST", "/chat?token=x", 401, json=NATIVE),
    Case("garbage token", "GET", "/chat/streams/abc?token=!!!", 401),
    Case("token of the wrong shape", "GET", "/chat/stream?message=hi&token=a.b.c", 401),
    Case("metrics key as a gateway key", "POST", "/v1/chat/completions", 401, bearer(METRICS_KEY), CHAT),
    Case("gateway key on /metrics", "GET", "/metrics", 401, bearer(KEY_ALPHA)),
    Case("no key on /metrics", "GET", "/metrics", 401),
    Case(
        "huge authorization header",
        "POST",
        "/v1/chat/completions",
        statuses(400, 401, 431),
        bearer("k" * 9000),
        CHAT,
        envelope=False,
    ),
    Case(
        "control byte in the key",
        "GET",
        "/models",
        statuses(400, 401),
        raw=b"x-api-key: abc\x01def\r\n",
        envelope=False,
    ),
    Case("CRLF smuggled into a key", "GET", "/models", statuses(400, 401), raw=b"x-api-key: a\rb\r\n", envelope=False),
    Case(
        "two Authorization headers, the first wrong",
        "GET",
        "/models",
        401,
        raw=b"Authorization: Bearer wrong\r\nAuthorization: Bearer " + KEY_ALPHA.encode() + b"\r\n",
    ),
    # --- authorisation ---
    Case(
        "model outside the key's list",
        "POST",
        "/v1/chat/completions",
        404,
        bearer(KEY_NARROW),
        CHAT,
        code="model_not_found",
    ),
    Case(
        "model outside the key's list, native",
        "POST",
        "/chat",
        404,
        bearer(KEY_NARROW),
        {"message": "hi", "model": "gpt-4o"},
        code="model_not_found",
    ),
    Case("model outside the key's list, by id", "GET", "/v1/models/gpt-4o", 404, bearer(KEY_NARROW)),
    Case(
        "model outside the key's list, browser",
        "POST",
        "/chat/streams",
        404,
        bearer(KEY_NARROW),
        {"message": "hi", "model": "gpt-4o"},
    ),
    # --- open routes stay open, and only they ---
    Case("health", "GET", "/health", 200),
    Case("livez", "GET", "/livez", 200),
    Case("readyz", "GET", "/readyz", 200),
    Case("metrics with its key", "GET", "/metrics", 200, bearer(METRICS_KEY)),
    Case("path traversal on static", "GET", "/static/..%2f..%2fserver%2fsettings.py", 404),
    Case("path traversal on static, plain", "GET", "/static/../../run.py", 404),
    Case("unknown route", "GET", "/admin", 404),
    Case("unknown route with a key", "GET", "/v1/files", 404, bearer(KEY_ALPHA)),
    # --- CORS ---
    Case(
        "preflight from a foreign origin",
        "OPTIONS",
        "/v1/chat/completions",
        403,
        {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    ),
    Case(
        "preflight from null",
        "OPTIONS",
        "/v1/chat/completions",
        403,
        {"Origin": "null", "Access-Control-Request-Method": "POST"},
    ),
    Case(
        "preflight from a look-alike origin",
        "OPTIONS",
        "/v1/chat/completions",
        403,
        {"Origin": ORIGIN + ".evil.example", "Access-Control-Request-Method": "POST"},
    ),
    Case(
        "preflight for an unserved method",
        "OPTIONS",
        "/v1/chat/completions",
        403,
        {"Origin": ORIGIN, "Access-Control-Request-Method": "PUT"},
    ),
    Case(
        "preflight from the allowlisted origin",
        "OPTIONS",
        "/v1/chat/completions",
        200,
        {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
    ),
    # --- bodies and fields, with a right key ---
    Case("body over the limit", "POST", "/v1/chat/completions", 413, JSON_KEY_ALPHA, data=b"{" * (2 << 20)),
    Case("not JSON", "POST", "/v1/chat/completions", 400, JSON_KEY_ALPHA, data=b"{nope"),
    Case("JSON array", "POST", "/v1/chat/completions", 400, bearer(KEY_ALPHA), [1, 2]),
    Case("max_tokens 0", "POST", "/v1/chat/completions", 400, bearer(KEY_ALPHA), {**CHAT, "max_tokens": 0}),
    Case(
        "max_completion_tokens -1",
        "POST",
        "/v1/chat/completions",
        400,
        bearer(KEY_ALPHA),
        {**CHAT, "max_completion_tokens": -1},
    ),
    Case("n of zero", "POST", "/v1/chat/completions", 400, bearer(KEY_ALPHA), {**CHAT, "n": 0}),
    Case("history in the one-step GET", "GET", "/chat/stream?message=hi&history=%5B%5D", 401),
    Case("unknown model", "POST", "/v1/chat/completions", 404, bearer(KEY_ALPHA), {**CHAT, "model": "x" * 5000}),
    Case(
        "deeply nested JSON",
        "POST",
        "/v1/chat/completions",
        400,
        JSON_KEY_ALPHA,
        data=b"[" * 100_000 + b"]" * 100_000,
    ),
    Case("message of the wrong type", "POST", "/chat", 400, bearer(KEY_ALPHA), {"message": ["a"]}),
    Case("a right key is served", "POST", "/v1/chat/completions", 200, bearer(KEY_ALPHA), CHAT),
    Case("a right key in api-key", "POST", "/chat", 200, {"api-key": KEY_ALPHA}, NATIVE),
    Case("stream id that does not exist, with a key", "GET", "/chat/streams/nope", 204, bearer(KEY_ALPHA)),
    Case(
        "forged request id",
        "GET",
        "/health",
        statuses(200, 400),
        raw=b"X-Request-ID: a\rSet-Cookie: x=1\r\n",
        envelope=False,
    ),
    Case("absolute-form target to another host", "GET", "http://evil.example/models", 401, raw=b""),
]
