"""redis-py clients for what ``redis_url`` names: one server, a Cluster, or Sentinel.

None of them retries on its own: a timed out charge is retried by keystile, once, under the
same charge id, which the scripts recognise (see ``meter.lua``). redis-py's cluster client
still follows MOVED and ASK and, after a connection error, maps the cluster anew for the next
command: that is what heals a failover without a restart. The Sentinel client asks the
sentinels for the primary on every new connection.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.cluster
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from keystile._core.redisurl import CLUSTER, SENTINEL, SINGLE, RedisTarget, parse_redis_url
from keystile._core.settings import Settings

__all__ = ["is_cluster", "pubsub_client", "sync_client", "target_of"]


def target_of(settings: Settings) -> RedisTarget:
    assert settings.redis_url
    return parse_redis_url(settings.redis_url)


def is_cluster(settings: Settings) -> bool:
    return target_of(settings).kind == CLUSTER


def _options(settings: Settings, timeout: float | None = None) -> dict[str, Any]:
    timeout = settings.redis_timeout if timeout is None else timeout
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "decode_responses": True,
    }


def _auth(target: RedisTarget) -> dict[str, Any]:
    auth: dict[str, Any] = {"username": target.username, "password": target.password}
    if target.tls:
        auth["ssl"] = True
    return auth


def sync_client(settings: Settings, timeout: float | None = None) -> Any:
    """A blocking client: ``redis.Redis`` (a Sentinel-managed one too) or ``RedisCluster``."""
    target = target_of(settings)
    options = _options(settings, timeout)
    if target.kind == SINGLE:
        assert settings.redis_url
        return redis.Redis.from_url(settings.redis_url, retry=Retry(NoBackoff(), 0), **options)
    if target.kind == CLUSTER:
        nodes = [redis.cluster.ClusterNode(h, p) for h, p in target.nodes]  # type: ignore[no-untyped-call]
        return redis.cluster.RedisCluster(
            startup_nodes=nodes, retry=Retry(NoBackoff(), 0), **options, **_auth(target)
        )
    assert target.kind == SENTINEL and target.service
    sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        list(target.nodes), sentinel_kwargs=_options(settings, timeout), **options
    )
    return sentinel.master_for(  # type: ignore[no-untyped-call]
        target.service, db=target.db, retry=Retry(NoBackoff(), 0), **options, **_auth(target)
    )


def pubsub_client(
    settings: Settings, channel: str, timeout: float, **extra: Any
) -> tuple[redis.Redis, bool]:
    """A client of its own for the invalidation channel, and whether the channel is sharded.

    On a Cluster of Redis 7 or later it is (SSUBSCRIBE): the client talks to the primary that
    owns the channel's slot. Older clusters broadcast plain PUBLISH to every node."""
    target = target_of(settings)
    # Bytes: with decode_responses redis-py reads a subscribed PING's pong as a string (8.1).
    options = {**_options(settings, timeout), **extra, "decode_responses": False}
    if target.kind == SINGLE:
        assert settings.redis_url
        return redis.Redis.from_url(settings.redis_url, **options), False
    if target.kind == SENTINEL:
        assert target.service
        sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(target.nodes), sentinel_kwargs=_options(settings, timeout)
        )
        master = sentinel.master_for(  # type: ignore[no-untyped-call]
            target.service, db=target.db, **options, **_auth(target)
        )
        return master, False
    cluster = sync_client(settings, timeout)
    try:
        node = cluster.get_node_from_key(channel)
        sharded = shards_pubsub(cluster)
    finally:
        cluster.close()
    return redis.Redis(node.host, node.port, **options, **_auth(target)), sharded


def shards_pubsub(cluster: Any) -> bool:
    """Whether the cluster's servers have sharded pub/sub (Redis 7): publisher and listeners
    decide alike, from the same servers."""
    version = str(cluster.info("server", target_nodes=cluster.get_random_node())["redis_version"])
    return int(version.split(".")[0]) >= 7
