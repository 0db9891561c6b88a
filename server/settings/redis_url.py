"""`redis.url` read as redis-py reads it (`parse_url`), so a mistake stops start-up instead of every command.

redis-py hands every query option to the connection it makes, by name: a misspelled one was a
TypeError on each chat and /readyz once started. A port out of range was a traceback at start-up;
a port of 0, a database that is not a number and a URL without a host were silently replaced by
redis-py's defaults (6379, 0, localhost). Messages name the option's place or a known name, never a
value: the URL holds a password.
"""

from __future__ import annotations

import difflib
import re
import ssl
from urllib.parse import parse_qs, unquote, urlparse

from redis.asyncio.connection import URL_QUERY_ARGUMENT_PARSERS

from .ports import check_port

# Options a URL may give every connection: redis-py reads them from a URL and each of its
# connection classes takes them (lib_name and lib_version too, deprecated: a warning per connection).
_ANY_CONNECTION = frozenset({"db", "username", "password", "health_check_interval", "socket_read_size", "protocol"})
# Taken by TCP connections only (redis://, rediss://): a unix:// connection refuses them.
_TCP_ONLY = frozenset({"socket_keepalive"})
# Taken by TLS connections only (rediss://).
_TLS_ONLY = frozenset(
    {
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_password",
        "ssl_check_hostname",
        "ssl_ciphers",
        "ssl_min_version",
        "ssl_include_verify_flags",
        "ssl_exclude_verify_flags",
    }
)
# Set by Sluice for each connection and pool (server/shared/link.py). redis-py lets a URL's value
# win, silently: a socket_timeout would replace a command's 2 s bound and a blocking read's none.
_SET_BY_SLUICE = {
    "socket_timeout": "",
    "socket_connect_timeout": "",
    "retry_on_timeout": "",
    "timeout": "",
    "client_name": "",
    "max_connections": "; set redis.command_connections instead",
}
_KNOWN = sorted(_ANY_CONNECTION | _TCP_ONLY | _TLS_ONLY | set(_SET_BY_SLUICE))
# Values redis-py reads from the URL but refuses only when it makes a connection, on each command.
_CHOICES: dict[str, tuple[frozenset[object], str]] = {
    "protocol": (frozenset({2, 3}), "expected 2 or 3"),
    "ssl_cert_reqs": (frozenset({"none", "optional", "required"}), "expected none, optional or required"),
    "ssl_min_version": (frozenset(version.value for version in ssl.TLSVersion), "expected a TLS version's number"),
}
_DIGITS = re.compile(r"[0-9]*")


def check_redis_url(url: str) -> None:
    """Raise ValueError, saying what is wrong, unless redis-py would connect where `url` says."""
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", "rediss", "unix"):
        raise ValueError("expected a URL starting with redis://, rediss:// or unix://")
    if parsed.scheme == "unix":
        if parsed.hostname or not parsed.path.strip("/"):
            raise ValueError("expected unix://[user:password@]/path/to/redis.sock (a socket's path, no host)")
    else:
        if not parsed.hostname:
            raise ValueError("expected redis://[user:password@]host[:port][/db]: the URL names no host")
        check_port(parsed)  # redis-py takes port 0 for 6379, silently
        # And a path that is not a number for database 0.
        if not _DIGITS.fullmatch(unquote(parsed.path).strip("/")):
            raise ValueError("its path is not a database number (redis://host:6379/0)")
    _check_options(parsed.scheme, parsed.query)


def url_options(scheme: str) -> frozenset[str]:
    """The query options a redis.url of `scheme` (redis, rediss, unix) may give its connections."""
    tls = _TLS_ONLY if scheme == "rediss" else frozenset()
    tcp = _TCP_ONLY if scheme != "unix" else frozenset()
    return _ANY_CONNECTION | tls | tcp


def _check_options(scheme: str, query: str) -> None:
    options = parse_qs(query)  # as redis-py reads them: an option without a value is ignored
    allowed = url_options(scheme)
    for number, (name, values) in enumerate(options.items(), start=1):
        if name in _SET_BY_SLUICE:
            raise ValueError(f"query option {name} is set by Sluice itself{_SET_BY_SLUICE[name]}")
        if name in _TLS_ONLY and name not in allowed:
            raise ValueError(f"query option {name} is for TLS connections, rediss:// only")
        if name in _TCP_ONLY and name not in allowed:
            raise ValueError(f"query option {name} is for TCP connections, not unix://")
        if name not in allowed:
            # Named by its place: an unknown name is not quoted, it may be part of a password.
            close = difflib.get_close_matches(name, _KNOWN, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ValueError(
                f"query option {number} of {len(options)} is not one Sluice's Redis connections take{hint}"
            )
        parse = URL_QUERY_ARGUMENT_PARSERS.get(name)
        try:
            value = parse(values[0]) if parse is not None else values[0]
        except (TypeError, ValueError):
            raise ValueError(f"query option {name}: its value is not one redis-py can read") from None
        choices, expected = _CHOICES.get(name, (None, ""))
        if choices is not None and value not in choices:
            raise ValueError(f"query option {name}: {expected}")
        if name == "db" and isinstance(value, int) and value < 0:
            raise ValueError("query option db: expected a database number, 0 or more")
