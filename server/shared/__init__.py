"""State shared between Sluice instances through Redis, when `[redis] url` is set.

link.py    the connections to Redis and whether it answers now (opened by contexts.redis_ctx)
breakers.py circuit breaker records (optimistic transactions), local while Redis is down
limit_store.py the gateway's LimitStore on those scripts, local limits while Redis is down
limits.py  per-key request, token and stream limits counted by Lua scripts (token buckets)
"""
