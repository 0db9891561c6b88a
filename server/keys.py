"""Every typed key for state kept on the application or a request, in one place.

Only the wiring (app.py, contexts.py) and the HTTP layer (routes/, middleware/, chat_call.py)
import this module; the components it names never do, so the types are real, not strings.
"""

from __future__ import annotations

from aiohttp import web

from .access import RequestRecord
from .auth.gate import Lease
from .auth.gateway_keys import GatewayKey, KeyRing
from .auth.limits import Decision, LimitStore
from .auth.tokens import TokenSigner
from .body_budget import BodyBudget
from .catalog import ModelCatalog
from .cors import CorsPolicy
from .credentials import UpstreamCredentials
from .dashboard import DashboardFeeds
from .lifecycle import Lifecycle
from .logs import LossyStream
from .metrics import Metrics
from .openai_schema import ChatCompletionValidator
from .settings import Settings, SettingsSource
from .shared.link import RedisLink
from .streams.registry import StreamRegistry
from .timers import Timers
from .upstreams.attempts import Upstream
from .worker_proxy import WorkerProxy

SETTINGS = web.AppKey("settings", Settings)
SETTINGS_SOURCE = web.AppKey("settings_source", SettingsSource)
UPSTREAM = web.AppKey("upstream", Upstream)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
BODY_BUDGET = web.AppKey("body_budget", BodyBudget)
METRICS = web.AppKey("metrics", Metrics)
LOG_STREAM = web.AppKey("log_stream", LossyStream)
CHAT_SCHEMA = web.AppKey("chat_schema", ChatCompletionValidator)
SIMULATOR_URL = web.AppKey("simulator_url", str)
STREAMS = web.AppKey("streams", StreamRegistry)
WORKER_PROXY = web.AppKey("worker_proxy", WorkerProxy)
UPSTREAM_CREDENTIALS = web.AppKey("upstream_credentials", UpstreamCredentials)
MODELS = web.AppKey("models", ModelCatalog)
REDIS = web.AppKey("redis", RedisLink)
CONNECTION_LIMIT = web.AppKey("connection_limit", int)
KEYRING = web.AppKey("keyring", KeyRing)
LIMITS = web.AppKey("limits", LimitStore)
TOKENS = web.AppKey("tokens", TokenSigner)
CORS_POLICY = web.AppKey("cors_policy", CorsPolicy)
# The streams' heartbeats and guard deadlines, on one loop timer (timers.py).
TIMERS = web.AppKey("timers", Timers)
# The open dashboard feeds and their one producer of snapshots (routes/dashboard.py).
DASHBOARD_FEEDS = web.AppKey("dashboard_feeds", DashboardFeeds)

REQUEST_ID = web.RequestKey("request_id", str)
RESPONSE_STARTED = web.RequestKey("response_started", bool)
RECORD = web.RequestKey("record", RequestRecord)
GATEWAY_KEY = web.RequestKey("gateway_key", GatewayKey)
LEASE = web.RequestKey("lease", Lease)
# The key's limits as its last take left them: OpenAI's x-ratelimit-* headers go on the response.
RATE_LIMITS = web.RequestKey("rate_limits", Decision)
# True when the request's URL carries a browser token: its response must not be cached or leak a referrer.
TOKEN_BEARING = web.RequestKey("token_bearing", bool)
