"""The port a settings URL names, checked the one way every URL setting checks it."""

from __future__ import annotations

from urllib.parse import ParseResult, SplitResult


def check_port(parts: ParseResult | SplitResult) -> None:
    """Raise ValueError unless the URL `parts` were read from names no port or one of 1-65535.

    A port of 0 is refused too: the clients take it for their default port, silently. The message
    never quotes the URL (it may hold a password).
    """
    try:
        port = parts.port
    except ValueError:  # not a number, or past 65535
        port = 0
    if port is not None and not 1 <= port <= 65535:
        raise ValueError("its port is not a number 1-65535")
