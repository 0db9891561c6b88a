"""Detached streams for browsers: generations that outlive any one connection, and their buffers.

registry.py    starts, stops and owns the generations; counts readers
generation.py  one generation: the upstream's reply relayed into the store
reader.py      one connection: the stored events after a resume point, then the live ones
resume.py      the `<stream>:<seq>` event ids a reconnect names
store.py       the StreamStore interface; memory.py is the in-process implementation
"""
