"""A fast simulated upstream for the benchmark: `python -m bench.upstream --port 0`.

It answers POST /v1/chat/completions like server/simulator (same chunk bytes, the same `sim`
body field and `#sim` line, each SSE event written on its own), and GET /_sim/requests/{id}
for when a stream tagged with X-Request-ID closed. It is written on `asyncio.Protocol` with
pre-encoded frames and timers instead of aiohttp handlers, so it needs a fraction of the
simulator's CPU per chunk: the benchmark measures the gateway, not its upstream.
"""
