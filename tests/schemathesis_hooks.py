"""Schemathesis hooks for the conformance run: name a configured model, so 200s are exercised too.

OpenAI's schema allows any string as `model`; Sluice answers 404 for a model not on its list,
so without this nearly every generated request would stop at that check.
"""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    if isinstance(body, dict) and "model" in body:
        body["model"] = "gpt-4o"
    return body
