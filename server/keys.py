"""Every typed key for state kept on the application or a request, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:  # the keys' types are named in strings: these modules import this one
    from .access import RequestRecord  # noqa: F401
    from .catalog import ModelCatalog  # noqa: F401
    from .lifecycle import Lifecycle  # noqa: F401
    from .metrics import Metrics  # noqa: F401
    from .openai_schema import ChatCompletionValidator  # noqa: F401
    from .peers import Peers  # noqa: F401
    from .settings import Settings  # noqa: F401
    from .streams.registry import StreamRegistry  # noqa: F401
    from .streams.settings import BrowserStreamSettings  # noqa: F401
    from .upstream import Upstream  # noqa: F401

SETTINGS = web.AppKey["Settings"]("settings")
UPSTREAM = web.AppKey["Upstream"]("upstream")
LIFECYCLE = web.AppKey["Lifecycle"]("lifecycle")
METRICS = web.AppKey["Metrics"]("metrics")
CHAT_SCHEMA = web.AppKey["ChatCompletionValidator"]("chat_schema")
SIMULATOR_URL = web.AppKey[str]("simulator_url")
BROWSER_STREAMS = web.AppKey["BrowserStreamSettings"]("browser_streams")
STREAMS = web.AppKey["StreamRegistry"]("streams")
PEERS = web.AppKey["Peers"]("peers")
MODELS = web.AppKey["ModelCatalog"]("models")

REQUEST_ID = web.RequestKey[str]("request_id")
RESPONSE_STARTED = web.RequestKey[bool]("response_started")
RECORD = web.RequestKey["RequestRecord"]("record")
