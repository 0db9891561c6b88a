"""The one error shape every failure must have."""

from __future__ import annotations

from typing import Any

import aiohttp


async def error_of(response: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    """Check the status and that the body is the JSON envelope; return its `error`."""
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str)
    assert error["message"]
    return error
