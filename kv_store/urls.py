"""Store URLs: their schemes, and as people may see them (the one place that hides a URL's
credentials).

Schemes: ``local`` (in-process), ``redis://`` / ``rediss://`` / ``unix://`` (one server: TCP,
TLS, a Unix socket), and ``redis+cluster://`` / ``rediss+cluster://`` (a Redis Cluster reached
through the node named, which tells the client the others).

A Redis URL may carry a password (``redis://:SECRET@host:6379/0``, ``redis://user:SECRET@...``,
or ``?password=SECRET``). Everything that shows a store URL (error messages, logs, the serve
banner, the CLI, operator summaries) shows ``redact_url(url)`` instead, so a secret never leaves
the process that was given it.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

HIDDEN = "***"
CLUSTER_SUFFIX = "+cluster"
REDIS_SCHEMES = ("redis", "rediss")
_SECRET_QUERY_KEYS = frozenset({"password", "pass", "pwd", "token", "secret", "auth"})


def redact_url(url: str) -> str:
    """``url`` with any password (in the user info or the query) replaced by ``***``.

    >>> redact_url("redis://alice:s3cret@db:6379/0?password=x&socket_timeout=1")
    'redis://alice:***@db:6379/0?password=***&socket_timeout=1'
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return HIDDEN  # unparseable: show nothing of it
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:{HIDDEN}@{hostport}" if has_password else f"{HIDDEN}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, HIDDEN if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs], safe="*"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def store_kind(url: str) -> str:
    """What a tenant may know of a store: its kind (``local``, ``redis``, ``rediss``,
    ``redis+cluster`` or ``rediss+cluster``)."""
    if url == "local":
        return "local"
    try:
        return urlsplit(url).scheme or "unknown"
    except ValueError:
        return "unknown"


def redis_target(url: str) -> tuple[str, bool]:
    """``(url as redis-py reads it, whether it names a cluster)`` for a Redis store URL.

    >>> redis_target("redis+cluster://db:7000")
    ('redis://db:7000', True)
    """
    scheme, sep, rest = url.partition("://")
    plain = scheme.removesuffix(CLUSTER_SUFFIX)
    if not sep or plain not in (*REDIS_SCHEMES, "unix") or scheme == f"unix{CLUSTER_SUFFIX}":
        raise ValueError(
            f"not a Redis store URL: {redact_url(url)!r} (expected redis://, rediss://, "
            "unix://, redis+cluster:// or rediss+cluster://)"
        )
    return f"{plain}://{rest}", plain != scheme
