"""Every typed key for state kept on the application or a request, in one place.

Only the wiring (app.py, contexts.py) and the HTTP layer (routes/, middleware/, chat_call.py)
import this module; the components it names never do, so the types are real, not strings.
"""

from __future__ import annotations

from aiohttp import web

from .access import RequestRecord
from .catalog import ModelCatalog
from .lifecycle import Lifecycle
from .metrics import Metrics
from .openai_schema import ChatCompletionValidator
from .settings import Settings
from .streams.registry import StreamRegistry
from .upstreams.attempts import Upstream
from .worker_proxy import WorkerProxy

SETTINGS = web.AppKey("settings", Settings)
UPSTREAM = web.AppKey("upstream", Upstream)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
METRICS = web.AppKey("metrics", Metrics)
CHAT_SCHEMA = web.AppKey("chat_schema", ChatCompletionValidator)
SIMULATOR_URL = web.AppKey("simulator_url", str)
STREAMS = web.AppKey("streams", StreamRegistry)
WORKER_PROXY = web.AppKey("worker_proxy", WorkerProxy)
MODELS = web.AppKey("models", ModelCatalog)

REQUEST_ID = web.RequestKey("request_id", str)
RESPONSE_STARTED = web.RequestKey("response_started", bool)
RECORD = web.RequestKey("record", RequestRecord)
