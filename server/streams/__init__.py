"""Detached streams for browsers: generations that outlive any one connection, and their buffers.

Not to be confused with the attached relay (relay.py, which a generation reuses) or the worker
proxy (worker_proxy.py, which forwards a stream's requests to the worker that owns it). The
registry is built, and closed, by `streams_ctx` in contexts.py; bounds come from BrowserSettings.

registry.py    starts, stops and owns the generations; counts readers
generation.py  one generation: the upstream's reply relayed into the store
reader.py      one connection: the stored events after a resume point, then the live ones
resume.py      the `<stream>:<seq>` event ids a reconnect names
store.py       the StreamStore interface; memory.py is the in-process implementation
redis_store.py the StreamStore on Redis Streams (`[redis] url`), shared by every instance:
redis_write.py   the producing side: batched writes, leases, rewrites after an outage
redis_follow.py  readers elsewhere: blocking XREADs on a few dedicated connections
redis_keys.py    the key layout and entry ids
"""
