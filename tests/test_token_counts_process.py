"""An absurd token limit on a `python run.py` process whose key has tpm: a whole 400, and the key's tokens untouched.

`max_tokens: 1e308` is an integer to JSON Schema: it was reserved on the key's tpm, the reset
header of ~1e308 tokens overflowed (`OverflowError` in the headers' duration, the client got an
empty reply), and reserving and giving back 1e308 cancelled to 0 in float arithmetic: the key's
bucket was emptied. The in-process 400s are in tests/test_token_counts.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import aiohttp
import orjson
import pytest

from tests.support.processes import Gateway, Simulator
from tests.support.security import bearer, start_keyed_gateway

KEY = "sk-gw-token-counts-4b5c6d7e8f9a0b1c"
TPM = 6000
MESSAGES = b'"messages": [{"role": "user", "content": "hi\\n#sim tokens=1"}]'
# Refused before any reservation (no `messages`): its headers read the key's token bucket as it is.
PROBE = b'{"model": "gpt-4o"}'


@pytest.fixture(scope="module")
def keyed(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    keys = f'\n[[auth.keys]]\nname = "token-counts"\nkey_sha256 = "{digest}"\ntpm = {TPM}\n'
    gateway = start_keyed_gateway(tmp_path_factory.mktemp("token-counts"), simulator, extra_toml=keys)
    yield gateway
    gateway.process.stop()


async def _post(http: aiohttp.ClientSession, gateway: Gateway, raw: bytes) -> tuple[int, bytes, int]:
    """Status, whole body and x-ratelimit-remaining-tokens of `raw` posted to /v1/chat/completions."""
    headers = {**bearer(KEY), "Content-Type": "application/json"}
    async with http.post(gateway.url + "/v1/chat/completions", data=raw, headers=headers) as r:
        return r.status, await r.read(), int(r.headers["x-ratelimit-remaining-tokens"])


@pytest.mark.parametrize(
    "fields",
    [b'"max_tokens": 1e308', b'"max_tokens": 1e308, "stream": true', b'"max_completion_tokens": 1e308'],
    ids=["max_tokens", "stream", "max_completion_tokens"],
)
async def test_a_token_limit_of_1e308_is_a_whole_400_that_leaves_the_keys_tokens_untouched(
    keyed: Gateway, fields: bytes
) -> None:
    async with aiohttp.ClientSession() as http:
        probed, _, before = await _post(http, keyed, PROBE)
        status, raw, _ = await _post(http, keyed, b'{"model": "gpt-4o", ' + MESSAGES + b", " + fields + b"}")
        _, _, after = await _post(http, keyed, PROBE)

    assert (probed, status) == (400, 400)
    error = orjson.loads(raw)["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", fields.split(b'"')[1].decode())
    # The bucket only refills between the probes: nothing was taken from it.
    assert after >= before
