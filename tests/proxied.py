"""A private Redis Cluster reached only through fault proxies (``redis_cluster_proxied``).

Each node announces its proxy's port (``--cluster-announce-port``; the bus stays direct,
``--cluster-announce-bus-port``), so CLUSTER SLOTS, MOVED and the replication links all
name proxies, and any client that maps the cluster (keystile's, redis-py's) goes through
them: ``cluster.proxies`` (a :class:`tests.faults.ProxyGroup`) then delays or drops replies.

The helpers of :class:`tests.topologies.Cluster` (``master_of``, ``failover``,
``kill_master_of``, ``flushall``) work as there, in the nodes' real ports: the probes talk to
the nodes directly, and what the nodes say about each other (proxy ports) is translated
back.  ``client()`` is direct too (it remaps every announced address to the node behind
it), so the tests' own reads never meet an injected fault.  ``url`` lists the proxies.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

from .faults import ProxyGroup
from .topologies import HOST, Addr, Cluster, _binaries, _running

__all__ = ["ProxiedCluster", "redis_cluster_proxied"]

#: The proxies' random faults draw from this seed (each member its own stream).
SEED = 20240611


class ProxiedCluster(Cluster):
    """3 masters + 3 replicas, each behind its own :class:`tests.faults.Proxy`."""

    def __init__(self, server: str, cli: str, base: Path, seed: Any = SEED) -> None:
        super().__init__(server, cli, base)
        # The proxies first: their ports are what the nodes announce.
        self.proxies = ProxyGroup([(HOST, p) for p in self._ports], seed=seed)
        self._front = {p: px.address[1] for p, px in zip(self._ports, self.proxies.proxies)}
        self._back = {front: real for real, front in self._front.items()}

    def _launch(self, port: int, name: str, cmd: list[str]) -> None:
        announce = ["--cluster-announce-ip", HOST,
                    "--cluster-announce-port", str(self._front[port]),
                    "--cluster-announce-bus-port", str(self._bus[port])]  # fmt: skip
        super()._launch(port, name, [*cmd, *announce])

    def start(self) -> None:
        super().start()
        self.url = "redis+cluster://" + ",".join(f"{HOST}:{self._front[p]}" for p in self._startup)

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self.proxies.close()

    def proxy_port(self, port: int) -> int:
        """The port of the proxy in front of the node on ``port``."""
        return self._front[port]

    def _real(self, port: int) -> int:
        return self._back.get(int(port), int(port))

    # What the nodes say names proxies: the helpers compare real ports.

    def _slot_map(self, port: int) -> tuple[tuple[int, int, int], ...]:
        return tuple(sorted((a, b, self._real(m)) for a, b, m in super()._slot_map(port)))

    def _view(self, port: int) -> dict[int, int | None]:
        view = super()._view(port)
        return {self._real(p): None if m is None else self._real(m) for p, m in view.items()}

    def _replication(self, port: int) -> dict[str, Any]:
        info = super()._replication(port)
        if "master_port" in info:
            info = {**info, "master_port": self._real(info["master_port"])}
        return info

    def _promoted(self, key: str, new: int) -> bool:
        if self._role(new) != "master" or not all(
            self._probe(p).execute_command("CLUSTER INFO")["cluster_state"] == "ok"
            and self._master_of_slot(key_slot(key.encode()), p) == new
            for p in self._live()
        ):
            return False
        with self.client(socket_timeout=2) as fresh:
            return bool(fresh.get_node_from_key(key).port == new)

    def _direct(self, address: Addr) -> Addr:
        host, port = address
        return (HOST, self._back[port]) if port in self._back else (host, port)

    def client(self, **kwargs: Any) -> RedisCluster:
        """A RedisCluster client straight to the nodes, past the proxies (close it)."""
        startup = [ClusterNode(HOST, p) for p in self._live()]
        options = {"decode_responses": True, "address_remap": self._direct, **kwargs}
        return RedisCluster(startup_nodes=startup, **options)


@pytest.fixture(scope="session")
def redis_cluster_proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxiedCluster]:
    """A private Redis Cluster whose every client link passes a fault proxy (see module)."""
    server, cli = _binaries("redis-server", "redis-cli")
    make = lambda: ProxiedCluster(server, cli, tmp_path_factory.mktemp("proxied"))  # noqa: E731
    yield from _running(make, "proxied cluster")
