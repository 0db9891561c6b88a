"""The deterministic reply text.

Generated replies pick word i from a fixed vocabulary by hashing the prompt
together with i, so the same prompt always yields the same reply in every
process (no use of the salted built-in hash()); each further choice of a
request's `n` reads its own stretch of that sequence. Generated words come from
pre-encoded JSON string literals, so the streaming loop never calls json.dumps.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

VOCABULARY: tuple[str, ...] = (
    "the", "river", "flows", "past", "a", "quiet", "mill", "where",
    "water", "turns", "old", "stone", "wheels", "and", "light", "falls",
    "on", "green", "fields", "of", "barley", "under", "slow", "clouds",
    "while", "gates", "open", "to", "let", "spring", "floods", "through",
    "narrow", "channels", "carved", "by", "patient", "hands", "long", "ago",
    "every", "morning", "keeper", "walks", "along", "bank", "counting",
    "ripples", "that", "carry", "news", "from", "hills", "towards", "sea",
    "sluice", "holds", "back", "tide", "until", "evening", "bells", "ring",
    "softly",
)  # fmt: skip

_MASK64 = (1 << 64) - 1
_CHOICE_STRIDE = 1 << 32
# Vocabulary size is a power of two so a mask picks a word without bias.
_WORD_MASK = len(VOCABULARY) - 1
assert len(VOCABULARY) & _WORD_MASK == 0

# JSON string literals, built once: the first token has no leading space.
_FIRST_JSON: tuple[bytes, ...] = tuple(json.dumps(w).encode() for w in VOCABULARY)
_REST_JSON: tuple[bytes, ...] = tuple(json.dumps(" " + w).encode() for w in VOCABULARY)


class Reply(Protocol):
    """A reply as a number of pieces, one per streamed content event."""

    @property
    def count(self) -> int:
        """Number of pieces (completion tokens)."""
        ...

    def text(self) -> str:
        """The whole reply."""
        ...

    def iter_json(self) -> Iterator[bytes]:
        """Each piece as an encoded JSON string literal, in order."""
        ...

    def truncated(self, limit: int) -> Reply:
        """The first `limit` pieces."""
        ...


@dataclass(frozen=True, slots=True)
class GeneratedReply:
    """Vocabulary words derived from a seed, produced lazily.

    Lazy because tests ask for 100k+ tokens: building them all up front would
    block the event loop and hold megabytes per stream.
    """

    seed: int
    count: int

    def text(self) -> str:
        """The whole reply; every word after the first starts with a space."""
        words = [VOCABULARY[word_index(self.seed, i)] for i in range(self.count)]
        return " ".join(words)

    def iter_json(self) -> Iterator[bytes]:
        """Pre-encoded JSON literals, one table lookup per token."""
        seed = self.seed
        for i in range(self.count):
            yield (_REST_JSON if i else _FIRST_JSON)[word_index(seed, i)]

    def truncated(self, limit: int) -> GeneratedReply:
        """The first `limit` words (the same words: position i does not depend on count)."""
        return GeneratedReply(self.seed, min(self.count, limit))


@dataclass(frozen=True, slots=True)
class EchoReply:
    """Given text cut into pieces of a fixed number of characters."""

    pieces: tuple[str, ...]

    @property
    def count(self) -> int:
        """Number of pieces."""
        return len(self.pieces)

    def text(self) -> str:
        """The pieces joined back together."""
        return "".join(self.pieces)

    def iter_json(self) -> Iterator[bytes]:
        """Each piece as a JSON literal, escaped exactly."""
        return map(json_string, self.pieces)

    def truncated(self, limit: int) -> EchoReply:
        """The first `limit` pieces."""
        return EchoReply(self.pieces[:limit])


def prompt_seed(contents: Sequence[str]) -> int:
    """A 64-bit seed from all message contents, stable across processes."""
    digest = hashlib.blake2b(digest_size=8)
    for content in contents:
        # surrogatepass: JSON may carry lone surrogates; hashing must not fail.
        digest.update(content.encode("utf-8", "surrogatepass"))
        # Separator so ["ab", "c"] and ["a", "bc"] hash differently.
        digest.update(b"\x00")
    return int.from_bytes(digest.digest(), "little")


def choice_seed(seed: int, choice: int) -> int:
    """The seed of choice number `choice` (0-based) of a reply to the prompt with `seed`.

    Choice 0 keeps the prompt's seed, so n=1 replies are unchanged. Choice i starts
    i * 2**32 positions further along the same word sequence: no reply is that long,
    so choices never share a stretch of words.
    """
    return (seed + choice * _CHOICE_STRIDE) & _MASK64


def word_index(seed: int, position: int) -> int:
    """Vocabulary index of token `position`: splitmix64 of (seed + position)."""
    x = (seed + position + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (x ^ (x >> 31)) & _WORD_MASK


def generated_reply(seed: int, tokens: int) -> GeneratedReply:
    """`tokens` vocabulary words chosen by hashing the prompt seed with each position."""
    return GeneratedReply(seed, tokens)


def echo_reply(text: str, chunk_chars: int) -> EchoReply:
    """`text` cut into pieces of exactly `chunk_chars` characters (last may be short)."""
    return EchoReply(tuple(text[i : i + chunk_chars] for i in range(0, len(text), chunk_chars)))


def json_string(value: str) -> bytes:
    """`value` as a JSON string literal in UTF-8, like OpenAI sends it."""
    try:
        return json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        # Lone surrogates cannot be UTF-8; \\u escapes still round-trip them.
        return json.dumps(value).encode()


def count_prompt_tokens(contents: Sequence[str]) -> int:
    """Whitespace-separated words over all contents, at least 1."""
    return max(1, sum(len(content.split()) for content in contents))
