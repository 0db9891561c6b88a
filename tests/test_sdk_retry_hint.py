"""`x-should-retry: false` tells an OpenAI SDK that Sluice already retried a failure, or would not.

Both SDKs read it before the status. After Sluice's routing asked its upstreams more than once, the
SDK's own two retries would each run a whole routing again; a failure Sluice does not retry (refused
credentials) would only be refused again. A retryable failure from a single attempt
(`routing.retries = 0`) keeps the SDK's retry, the only one it gets. The gateway runs in-process in
front of a fake upstream that answers every chat request 500.
"""

from __future__ import annotations

from tests.support.envelope import error_of
from tests.test_upstream_errors import CALLS, BuildGateway, failing_upstream

V1 = CALLS["v1"]


async def test_a_failure_sluice_retried_tells_the_sdk_not_to_retry(upstream_app_client: BuildGateway) -> None:
    upstream = failing_upstream(500, "Broken.")
    gateway = await upstream_app_client(upstream, routing={"retries": 1, "retry_budget_seconds": 5.0})

    response = await gateway.post(V1.path, json=V1.body)

    await error_of(response, 502)
    assert response.headers["x-should-retry"] == "false"


async def test_a_failure_from_a_single_attempt_leaves_the_retry_to_the_sdk(upstream_app_client: BuildGateway) -> None:
    upstream = failing_upstream(500, "Broken.")
    gateway = await upstream_app_client(upstream, routing={"retries": 0})

    response = await gateway.post(V1.path, json=V1.body)

    await error_of(response, 502)
    assert "x-should-retry" not in response.headers


async def test_a_failure_sluice_chose_not_to_retry_tells_the_sdk_not_to_retry_either(
    upstream_app_client: BuildGateway,
) -> None:
    # Refused credentials (like a reply that may have been paid for) are not asked again, whatever
    # `routing.retries` says: an SDK's retries would each be one more refusal.
    upstream = failing_upstream(401, "Incorrect API key provided.")
    gateway = await upstream_app_client(upstream, routing={"retries": 2, "retry_budget_seconds": 5.0})

    response = await gateway.post(V1.path, json=V1.body)

    assert (await error_of(response, 502))["code"] == "upstream_auth_failed"
    assert response.headers["x-should-retry"] == "false"
