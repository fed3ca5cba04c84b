"""Tests of the Redis Cluster and Sentinel fixtures (tests/topologies.py).

They check that the topologies are real (every master serves keys and has a synced
replica) and that the failover helpers do what they say and leave a healthy topology
behind, with clients made before a failover still working afterwards.

The failover tests (names with ``failover``/``kill``) take seconds, most of it the
Sentinel one (~11 s: a sentinel converts a live old master to a replica only some
seconds after the switch); deselect them with ``-k "not failover and not kill"``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import TypeVar

import pytest
import redis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from .topologies import Cluster, SentinelSetup

pytestmark = pytest.mark.redis
T = TypeVar("T")


def _key() -> str:
    return f"kst-topo-{uuid.uuid4().hex[:12]}"


def _key_per_master(cluster: Cluster) -> dict[tuple[str, int], str]:
    """One fresh key for each of the 3 masters."""
    keys: dict[tuple[str, int], str] = {}
    while len(keys) < 3:
        key = _key()
        keys.setdefault(cluster.master_of(key), key)
    return keys


def _with_retries(call: Callable[[], T], attempts: int = 3) -> T:
    """``call()``, retried after a connection error (how a failover may show)."""
    for _ in range(attempts - 1):
        try:
            return call()
        except redis.ConnectionError:
            pass
    return call()


def _assert_replicates(node: redis.Redis, master_port: int) -> None:
    info = node.info("replication")
    assert (info["role"], info["master_port"], info["master_link_status"]) == (
        "slave",
        master_port,
        "up",
    )


# --------------------------------------------------------------------------- cluster


def test_cluster_url_and_nodes(redis_cluster: Cluster) -> None:
    startup = redis_cluster.url.removeprefix("redis+cluster://").split(",")
    assert len(startup) == 3 and len(set(redis_cluster.nodes)) == 6
    assert {tuple(a.split(":")) for a in startup} <= {(h, str(p)) for h, p in redis_cluster.nodes}


def test_cluster_serves_keys_from_every_master(redis_cluster: Cluster) -> None:
    keys = _key_per_master(redis_cluster)
    with redis_cluster.client() as client:
        for key in keys.values():
            client.set(key, key)
        assert [client.get(key) for key in keys.values()] == list(keys.values())
    for (_, port), key in keys.items():  # each key really lives on its own master
        with redis_cluster.node_client(port) as node:
            assert node.get(key) == key


def test_every_master_has_a_synced_replica(redis_cluster: Cluster) -> None:
    masters = set(_key_per_master(redis_cluster))
    replicas = {redis_cluster.replica_of_master(master) for master in masters}
    assert masters | replicas == set(redis_cluster.nodes)
    for master in masters:
        with redis_cluster.node_client(redis_cluster.replica_of_master(master)[1]) as node:
            _assert_replicates(node, master[1])
        with redis_cluster.node_client(master[1]) as node:
            assert node.info("replication")["connected_slaves"] == 1


def test_cluster_flushall_empties_every_master(redis_cluster: Cluster) -> None:
    keys = _key_per_master(redis_cluster)
    with redis_cluster.client() as client:
        for key in keys.values():
            client.set(key, "x")
        redis_cluster.flushall()
        assert [client.exists(key) for key in keys.values()] == [0, 0, 0]


def test_cluster_failover_moves_the_slot_and_old_clients_follow(redis_cluster: Cluster) -> None:
    key = _key()
    old = redis_cluster.master_of(key)
    replica = redis_cluster.replica_of_master(old)
    with redis_cluster.client() as client:  # made before: it has the old slot map
        client.set(key, "before")
        redis_cluster.failover(key)
        assert redis_cluster.master_of(key) == replica
        assert redis_cluster.replica_of_master(replica) == old  # the old master follows
        # CLUSTER FAILOVER loses nothing; redis-py follows the MOVED reply by itself.
        assert client.get(key) == "before"
        client.set(key, "after")
    with redis_cluster.client() as fresh:
        assert fresh.get(key) == "after"
        assert fresh.get_node_from_key(key).port == replica[1]


def test_cluster_failover_async_client_follows(redis_cluster: Cluster) -> None:
    key = _key()
    replica = redis_cluster.replica_of_master(redis_cluster.master_of(key))
    startup = redis_cluster.nodes[0]

    async def scenario() -> str | None:
        client = AsyncRedisCluster(host=startup[0], port=startup[1], decode_responses=True)
        try:
            await client.set(key, "before")
            await asyncio.to_thread(redis_cluster.failover, key)
            await client.set(key, "after")
            return await client.get(key)
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) == "after"
    assert redis_cluster.master_of(key) == replica


def test_cluster_kill_master_promotes_the_replica(redis_cluster: Cluster) -> None:
    key = _key()
    old = redis_cluster.master_of(key)
    replica = redis_cluster.replica_of_master(old)
    with redis_cluster.node_client(old[1]) as node:
        node.set(key, "kept")
        assert node.wait(1, 5000) == 1  # replicated, so it must survive the kill
    with redis_cluster.client() as client:
        client.get(key)  # connected to the old master before it dies
        redis_cluster.kill_master_of(key)
        assert redis_cluster.master_of(key) == replica
        assert redis_cluster.replica_of_master(replica) == old  # restarted, rejoined
        assert _with_retries(lambda: client.get(key)) == "kept"
        client.set(key, "after")
    with redis_cluster.node_client(old[1]) as node:
        _assert_replicates(node, replica[1])


# -------------------------------------------------------------------------- sentinel


def test_sentinel_setup(redis_sentinel: SentinelSetup) -> None:
    addresses = ",".join(f"{h}:{p}" for h, p in redis_sentinel.sentinels)
    assert redis_sentinel.url == f"redis+sentinel://{addresses}/keystile-test"
    master = redis_sentinel.master_address()
    with redis_sentinel.client() as client:
        client.set(_key(), "x")
        assert client.info("replication")["role"] == "master"
        assert client.connection_pool.get_master_address() == master
        redis_sentinel.flushall()
        assert client.dbsize() == 0


def test_sentinel_failover_swaps_roles_and_old_clients_follow(
    redis_sentinel: SentinelSetup,
) -> None:
    key = _key()
    old = redis_sentinel.master_address()
    with redis_sentinel.client() as client:  # made before: connected to the old master
        client.set(key, "before")
        assert client.wait(1, 5000) == 1
        redis_sentinel.failover()
        new = redis_sentinel.master_address()
        assert new != old
        with redis.Redis(*new, decode_responses=True) as node:
            assert node.info("replication")["role"] == "master"
        with redis.Redis(*old, decode_responses=True) as node:
            _assert_replicates(node, new[1])
        # The sentinel closed the old connections (CLIENT KILL); redis-py reconnects
        # through the sentinels, at worst after a connection error or two.
        assert _with_retries(lambda: client.get(key)) == "before"
        _with_retries(lambda: client.set(key, "after"))
        assert client.connection_pool.get_master_address() == new
