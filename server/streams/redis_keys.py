"""Where a browser stream lives in Redis, and how its entries are numbered.

    <prefix>:stream:<id>         a Redis Stream: entry `0-<seq>` holds event `seq` in field `e`;
                                 after the last event, entry `0-<last+1>` with field `end` marks
                                 the end (XREAD wakes on it like on any event)
    <prefix>:stream:<id>:lease   the producing instance's id, expiring unless renewed
    <prefix>:stream:<id>:owner   who started it: the gateway key's name and a fingerprint of its
                                 hash keyed with the token secret (`name:fingerprint`, see
                                 server/auth/tokens.py; "" for none; never the key or its hash),
                                 kept as long as the stream. A record of the name alone (written
                                 before the fingerprint was) matches no key: see StreamRegistry.may_access
    <prefix>:stream:<id>:read    set by readers on other instances, so the producer's grace
                                 period counts them
    <prefix>:stop                the pub/sub channel a stop request goes out on
    <prefix>:wake:<instance>:<n> a one-entry stream an instance's readers add to, to end the
                                 blocking XREAD of its connection `n` (redis_follow.py)

An entry id is its sequence number, so XADD rejects a replayed or out-of-order write, and
`Last-Event-ID: <id>:<seq>` is the exclusive range start `(0-<seq>`.
"""

from __future__ import annotations

EVENT = b"e"
END = b"end"


def entry_id(seq: int) -> str:
    """The Redis Stream entry id of event `seq`."""
    return f"0-{seq}"


def entry_seq(entry: bytes | str) -> int:
    """The sequence number an entry id carries."""
    text = entry.decode() if isinstance(entry, bytes) else entry
    return int(text.partition("-")[2])


class StreamKeys:
    """The key names under one prefix."""

    __slots__ = ("prefix", "stop_channel")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.stop_channel = f"{prefix}:stop"

    def events(self, stream_id: str) -> str:
        return f"{self.prefix}:stream:{stream_id}"

    def lease(self, stream_id: str) -> str:
        return f"{self.prefix}:stream:{stream_id}:lease"

    def read(self, stream_id: str) -> str:
        return f"{self.prefix}:stream:{stream_id}:read"

    def owner(self, stream_id: str) -> str:
        return f"{self.prefix}:stream:{stream_id}:owner"

    def wake(self, instance: str, connection: int) -> str:
        return f"{self.prefix}:wake:{instance}:{connection}"
