"""An upstream's answer: its status and headers, its body on the connection, and the way back to the pool."""

from __future__ import annotations

import zlib

from ..errors import UpstreamProtocolError
from .connections import OriginPool
from .failures import malformed_reply, unusable_reply
from .http1 import Http1Connection
from .parser import Headers, ResponseParser

# A UTF-8 byte order mark, which some servers write before a body: one is dropped from the start
# of a reply or a stream (as the SSE standard's parser drops it; JSON parsers refuse it).
BOM = b"\xef\xbb\xbf"
# Content-Encoding values decoded for a non-streaming reply (none is asked for: no Accept-Encoding).
DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class UpstreamResponse:
    """One response; `release()` once its body was read to the end, else `close()`: either frees its slot."""

    __slots__ = ("_pool", "body", "headers", "status")

    def __init__(self, head: ResponseParser, connection: Http1Connection, pool: OriginPool) -> None:
        self.status = head.status
        self.headers: Headers = head.headers
        self.body: Http1Connection = connection
        self._pool: OriginPool | None = pool

    def release(self) -> None:
        """Hand the connection back: kept for the next request if the body was read to its end, else closed."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.release(self.body)

    def close(self) -> None:
        """Close the connection at once (the upstream sees it), then free its slot."""
        self.body.close()
        self.release()

    async def read_bounded(self, limit: int) -> bytes:
        """The whole body, decoded, or UpstreamProtocolError once it passes `limit` bytes decoded.

        Raises ConnectionBroken or MalformedResponse when the body cannot be read to its end, and
        `upstream_malformed_reply` when it is not what its Content-Encoding says.
        """
        decoder = self.decoder()
        parts: list[bytes] = []
        size = 0
        try:
            while piece := await self.body.read():
                if decoder is not None:
                    # At most one byte past the limit comes out: a small bomb cannot inflate in memory.
                    piece = decoder.decompress(piece, limit - size + 1)
                size += len(piece)
                if size > limit:
                    self.close()  # unread bytes stay behind: the connection cannot be reused
                    raise UpstreamProtocolError(
                        f"The upstream's reply is larger than {limit} bytes.", code="upstream_reply_too_large"
                    )
                parts.append(piece)
            if decoder is not None:
                parts.append(decoder.flush())
        except zlib.error:
            # Not a reply at all, as a body that is not JSON is not one: for another upstream to give.
            self.close()  # its rest unread
            raise malformed_reply("The upstream's reply does not decode as its Content-Encoding says.") from None
        return b"".join(parts)

    async def read_up_to(self, limit: int) -> bytes:
        """At most `limit` bytes of the body (decoded when that is possible), until it ends."""
        pieces: list[bytes] = []
        size = 0
        while size < limit and (piece := await self.body.read()):
            pieces.append(piece)
            size += len(piece)
        data = b"".join(pieces)[:limit]
        try:
            decoder = self.decoder()
            return data if decoder is None else decoder.decompress(data, limit)
        except (UpstreamProtocolError, zlib.error):
            return data

    def decoder(self) -> zlib._Decompress | None:
        """A decoder for the body's Content-Encoding; UpstreamProtocolError for one Sluice does not decode."""
        coding = (self.headers.get("content-encoding") or "identity").strip().lower()
        if coding == "identity":
            return None
        wbits = DECODERS.get(coding)
        if wbits is None:
            raise unusable_reply(
                f"The upstream's reply is encoded as {coding!r}, which Sluice does not decode.",
                code="upstream_encoding_unsupported",
            )
        return zlib.decompressobj(wbits)
