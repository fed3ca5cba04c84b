"""What a ``redis_url`` names: one server, a Redis Cluster or a Sentinel-watched primary.

* ``redis://[user:password@]host[:port][/db]``, ``rediss://...``, ``unix:///path``: one server;
* ``redis+cluster://host:port[,host:port...]`` (``rediss+cluster://``): a cluster's startup
  nodes (any of them will do: the client learns the others);
* ``redis+sentinel://host:port[,host:port...]/service[/db]`` (``rediss+sentinel://``): the
  sentinels, and the name they monitor the primary under.

Parsed here without a client, so a wrong URL fails when the settings are read, naming the part
that is wrong, never later in the first request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

SINGLE, CLUSTER, SENTINEL = "single", "cluster", "sentinel"
_SCHEMES = {
    "redis": (SINGLE, False),
    "rediss": (SINGLE, True),
    "unix": (SINGLE, False),
    "redis+cluster": (CLUSTER, False),
    "rediss+cluster": (CLUSTER, True),
    "redis+sentinel": (SENTINEL, False),
    "rediss+sentinel": (SENTINEL, True),
}
_HOST = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+)(?::(\d{1,5}))?$")


class RedisUrlError(ValueError):
    """The URL is wrong; the message names the part (and never holds the password)."""


@dataclass(frozen=True, slots=True)
class RedisTarget:
    kind: str
    tls: bool
    #: ``(host, port)``: the server, the cluster's startup nodes or the sentinels.
    nodes: tuple[tuple[str, int], ...]
    service: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def parse_redis_url(url: str) -> RedisTarget:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        names = ", ".join(f"'{s}://'" for s in _SCHEMES)
        raise RedisUrlError(f"the scheme must be one of {names}")
    kind, tls = _SCHEMES[scheme.lower()]
    if kind == SINGLE:
        return RedisTarget(kind, tls, ())  # redis-py's own parser reads it, query included
    parts = urlsplit("redis://" + rest)
    if parts.query or parts.fragment:
        raise RedisUrlError(f"a {kind} URL takes no query or fragment")
    netloc = parts.netloc
    username = password = None
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, _, secret = userinfo.partition(":")
        username, password = unquote(user) or None, unquote(secret) or None
    nodes = tuple(_node(text, kind) for text in netloc.split(","))
    path = [p for p in parts.path.split("/") if p]
    service, db = None, "0"
    if kind == SENTINEL:
        if not path:
            raise RedisUrlError("a sentinel URL needs the service name: .../service_name")
        service = unquote(path.pop(0))
    if path:
        db = path.pop(0)
        if kind == CLUSTER:
            raise RedisUrlError("a cluster URL takes no database: Redis Cluster has only db 0")
    if path or not db.isdigit():
        raise RedisUrlError(f"the path must be {'/service[/db]' if service else 'empty'}")
    return RedisTarget(kind, tls, nodes, service, int(db), username, password)


def _node(text: str, kind: str) -> tuple[str, int]:
    match = _HOST.match(text)
    if match is None:
        raise RedisUrlError(f"the {kind} node {text!r} is not host[:port]")
    port = int(match.group(2) or (26379 if kind == SENTINEL else 6379))
    if not 0 < port < 65536:
        raise RedisUrlError(f"the {kind} node {text!r} has no valid port")
    return match.group(1).strip("[]"), port
