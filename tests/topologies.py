"""Private Redis topologies: a Redis Cluster and a Sentinel setup (session fixtures).

``redis_cluster``: 3 masters + 3 replicas; ``redis_sentinel``: a primary, a replica and
3 Sentinels.  Topology-aware code (slot routing, MOVED, promotion) can only be tested on
real servers, and a failover must never hit a server the tests did not start: so every
process here is started by the tests on free 127.0.0.1 ports, in its own temporary dir,
persistence off, and stopped at the end; FLUSHALL, failovers and SIGKILL are all fine.
Missing ``redis-server``/``redis-cli`` skips the tests, or fails them under ``CI=true``.

Node timeouts are 1000 ms so failovers take seconds; the failover helpers return only
once the topology is healthy again (every master has a synced replica), so tests may run
in any order.  Waits end as soon as the state is reached, else raise ``TopologyError``.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.retry import Retry
from redis.sentinel import Sentinel

from .services import REDIS_START_TIMEOUT, _log_tail, _spawn, _stop, free_port, service_missing

__all__ = ["Cluster", "SentinelSetup", "TopologyError", "redis_cluster", "redis_sentinel"]

HOST = "127.0.0.1"
START_TIMEOUT = 30.0  # generous: a slow 2-core machine may be running other tests too
_ATTEMPTS = 2  # a topology that fails to come up is rebuilt once, on new ports
_ERRORS = (redis.RedisError, redis.RedisClusterException, OSError)
Addr = tuple[str, int]
#: No persistence; a replica's full sync starts at once (diskless sync waits 5 s otherwise).
_COMMON = ["--bind", HOST, "--save", "", "--appendonly", "no", "--daemonize", "no",
           "--repl-diskless-sync-delay", "0"]  # fmt: skip


class TopologyError(RuntimeError):
    """A topology did not reach the state waited for; the message says which and why."""


def _binaries(*names: str) -> list[str]:
    """The paths of ``names``; a missing one skips the test (fails it under CI)."""
    return [shutil.which(name) or service_missing(f"{name} not found on PATH") for name in names]


def _free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return list(ports)


def _wait(what: str, check: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``check()`` holds (redis and OS errors count as "not yet")."""
    start = time.monotonic()
    error: Exception | None = None
    while True:
        try:
            if check():
                return time.monotonic() - start
        except _ERRORS as exc:
            error = exc
        if time.monotonic() - start > timeout:
            cause = f" (last error: {type(error).__name__}: {error})" if error else ""
            raise TopologyError(f"{what}: not reached within {timeout:.0f} s{cause}")
        time.sleep(0.05)


def _linked(info: dict[str, Any], master_port: int) -> bool:
    """INFO replication of a replica of ``master_port`` whose link is up."""
    link = (info["role"], info.get("master_port"), info.get("master_link_status"))
    return link == ("slave", master_port, "up")


def _has_online_replica(info: dict[str, Any]) -> bool:
    replicas = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
    return info["role"] == "master" and any(r.get("state") == "online" for r in replicas)


class _Topology:
    """Processes by port, each in its own dir under ``base``; probe clients that fail
    fast (no retries: a dead node must say so at once, not after redis-py's backoff)."""

    def __init__(self, server: str, base: Path) -> None:
        self._server, self._base = server, base
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._probes: dict[int, redis.Redis] = {}

    def _launch(self, port: int, name: str, cmd: list[str]) -> None:
        workdir = self._base / f"{name}-{port}"
        workdir.mkdir(exist_ok=True)  # exists on a restart: the node reuses its files
        cmd = [c.replace("{dir}", str(workdir)) for c in cmd]
        result = _spawn(cmd, workdir / "redis.log", lambda: self._answers(port),
                        REDIS_START_TIMEOUT, signal.SIGTERM, cwd=workdir)  # fmt: skip
        if isinstance(result, str):
            raise TopologyError(result)
        self._procs[port] = result

    def _answers(self, port: int) -> bool:
        with contextlib.suppress(*_ERRORS):
            return bool(self._probe(port).ping())
        return False

    def _probe(self, port: int) -> redis.Redis:
        if port not in self._probes:
            self._probes[port] = redis.Redis(
                HOST, port, decode_responses=True, socket_timeout=2,
                socket_connect_timeout=1, retry=Retry(NoBackoff(), 0),
            )  # fmt: skip
        return self._probes[port]

    def _replication(self, port: int) -> dict[str, Any]:
        return self._probe(port).info("replication")

    def stop(self) -> None:
        for proc in self._procs.values():
            _stop(proc, signal.SIGTERM)
        self._procs.clear()
        for client in self._probes.values():
            client.close()

    def _logs(self) -> str:
        logs = sorted(self._base.rglob("*.log"))
        return "\n".join(f"--- {log} ---\n{_log_tail(log, 1500)}" for log in logs)


class Cluster(_Topology):
    """A private Redis Cluster: 3 masters, each with one replica (``redis_cluster``).
    ``nodes`` are the same 6 all session (a killed node is restarted on its port)."""

    def __init__(self, server: str, cli: str, base: Path) -> None:
        super().__init__(server, base)
        self._cli, ports = cli, _free_ports(12)  # explicit bus ports: port+10000 may be >65535
        self._ports, self._bus = ports[:6], dict(zip(ports[:6], ports[6:]))
        self.nodes: list[Addr] = [(HOST, p) for p in self._ports]
        self._startup: list[int] = []
        self.url = ""

    def _start_node(self, port: int) -> None:
        """Start, or restart with its own nodes-P.conf (so it rejoins), one node."""
        self._launch(port, "node", [
            self._server, "--port", str(port), "--cluster-enabled", "yes",
            "--cluster-config-file", f"nodes-{port}.conf", "--cluster-port",
            str(self._bus[port]), "--cluster-node-timeout", "1000",
            "--cluster-replica-validity-factor", "0",  # a replica may always take over
            "--dir", "{dir}", *_COMMON,
        ])  # fmt: skip

    def start(self) -> None:
        for port in self._ports:
            self._start_node(port)
        log = self._base / "cluster-create.log"
        cmd = [self._cli, "--cluster", "create", *(f"{HOST}:{p}" for p in self._ports),
               "--cluster-replicas", "1", "--cluster-yes"]  # fmt: skip
        with open(log, "wb") as out:  # a hang raises TimeoutExpired: the start is retried
            done = subprocess.run(cmd, stdout=out, stderr=out, timeout=START_TIMEOUT)
        if done.returncode != 0:
            raise TopologyError(f"redis-cli --cluster create failed:\n{_log_tail(log)}")
        _wait("cluster healthy (3 masters with synced replicas)", self._healthy, START_TIMEOUT)
        self._startup = sorted(p for p in self._ports if self._role(p) == "master")
        self.url = "redis+cluster://" + ",".join(f"{HOST}:{p}" for p in self._startup)

    def _role(self, port: int) -> str:
        return str(self._replication(port)["role"])

    def _live(self) -> list[int]:
        return [p for p in self._ports if p in self._procs]

    def _slot_map(self, port: int) -> tuple[tuple[int, int, int], ...]:
        """(first slot, last slot, master port) ranges as node ``port`` sees them."""
        rows = self._probe(port).execute_command("CLUSTER SLOTS")
        return tuple(sorted((int(r[0]), int(r[1]), int(r[2][1])) for r in rows))

    def _master_of_slot(self, slot: int, port: int) -> int:
        for first, last, master in self._slot_map(port):
            if first <= slot <= last:
                return master
        raise TopologyError(f"slot {slot} is not assigned (as seen by node {port})")

    def _view(self, port: int) -> dict[int, int | None]:
        """Node ``port``'s CLUSTER NODES as {node port: its master's port, None for a
        master}; nodes it flags ``fail`` (or knows no address of) are left out."""
        nodes = {
            int(address.split("@")[0].rsplit(":", 1)[1]): node
            for address, node in self._probe(port).execute_command("CLUSTER NODES").items()
            if "fail" not in node["flags"].split(",") and ":0@" not in address
        }
        ports = {node["node_id"]: p for p, node in nodes.items()}
        return {p: ports.get(node["master_id"]) for p, node in nodes.items()}

    def _healthy(self) -> bool:
        """All 6 nodes ok and with one view (slots, who replicates whom, nobody failed)
        that is real: 3 masters, each with an online replica whose link is up."""
        for port in self._ports:
            info = self._probe(port).execute_command("CLUSTER INFO")
            if (info["cluster_state"], info["cluster_slots_assigned"],
                    info["cluster_known_nodes"]) != ("ok", "16384", "6"):  # fmt: skip
                return False
        infos = {p: self._replication(p) for p in self._ports}
        real = {p: None if i["role"] == "master" else i["master_port"] for p, i in infos.items()}
        masters = sorted(p for p, master in real.items() if master is None)
        maps = {self._slot_map(p) for p in self._ports}
        return (
            len(masters) == 3
            and sorted(m for m in real.values() if m is not None) == masters
            and all(self._view(p) == real for p in self._ports)
            and len(maps) == 1
            and sorted({master for _, _, master in maps.pop()}) == masters
            and all(_has_online_replica(infos[p]) for p in masters)
            and all(_linked(infos[p], m) for p, m in real.items() if m is not None)
        )

    def _promoted(self, key: str, new: int) -> bool:
        """``new`` is a master, every live node is ok and gives it ``key``'s slot, and a
        fresh RedisCluster client routes ``key`` to it."""
        if self._role(new) != "master" or not all(
            self._probe(p).execute_command("CLUSTER INFO")["cluster_state"] == "ok"
            and self._master_of_slot(key_slot(key.encode()), p) == new
            for p in self._live()
        ):
            return False
        startup = [ClusterNode(HOST, p) for p in self._live()]
        with RedisCluster(startup_nodes=startup, socket_timeout=2) as fresh:
            return bool(fresh.get_node_from_key(key).port == new)

    def client(self, **kwargs: Any) -> RedisCluster:
        """A new RedisCluster client (close it); startup node: the first initial master."""
        return RedisCluster(HOST, self._startup[0], **{"decode_responses": True, **kwargs})

    def node_client(self, port: int, **kwargs: Any) -> redis.Redis:
        """A plain client to one node (close it); keyed commands may answer MOVED."""
        return redis.Redis(HOST, port, **{"decode_responses": True, **kwargs})

    def master_of(self, key: str) -> Addr:
        """The master serving ``key``'s slot (asked of a live node)."""
        return HOST, self._master_of_slot(key_slot(key.encode()), self._live()[0])

    def replica_of_master(self, master: Addr) -> Addr:
        """The replica of ``master``, as that master's CLUSTER NODES says."""
        for port, of in self._view(master[1]).items():
            if of == master[1]:
                return HOST, port
        raise TopologyError(f"master {master} has no replica")

    def _promote(self, key: str, new: int, act: Callable[[], object], timeout: float) -> float:
        """``act()``; the seconds until ``new`` is promoted (``_promoted``).  Returns
        once the cluster is healthy again (waited for, not counted)."""
        start = time.monotonic()
        act()
        _wait(f"node {new} promoted", lambda: self._promoted(key, new), timeout)
        took = time.monotonic() - start
        for port in set(self._ports) - set(self._procs):  # killed: restart it, it rejoins
            self._start_node(port)
        _wait("cluster healthy again", self._healthy, timeout)
        return took

    def failover(self, key: str, timeout: float = 15.0) -> float:
        """CLUSTER FAILOVER on the replica of ``key``'s master (coordinated: no write is
        lost); the seconds until it is promoted.  The old master becomes its replica."""
        new = self.replica_of_master(self.master_of(key))[1]
        failover = lambda: self._probe(new).execute_command("CLUSTER FAILOVER")  # noqa: E731
        return self._promote(key, new, failover, timeout)

    def kill_master_of(self, key: str, timeout: float = 30.0) -> float:
        """SIGKILL ``key``'s master; the seconds until its replica is promoted.  The
        killed node is then restarted on its port with its nodes-P.conf and rejoins as a
        replica of the new master (empty: a full sync); this returns once it has.
        Writes not yet replicated are lost, as in reality."""
        old = self.master_of(key)
        new = self.replica_of_master(old)[1]
        proc = self._procs.pop(old[1])
        return self._promote(key, new, lambda: (proc.kill(), proc.wait()), timeout)

    def flushall(self) -> None:
        """FLUSHALL on every master (private servers: allowed)."""
        for port in self._live():
            if self._role(port) == "master":
                self._probe(port).flushall()


class SentinelSetup(_Topology):
    """A private primary + replica watched by 3 Sentinels (``redis_sentinel``)."""

    service = "keystile-test"

    def __init__(self, server: str, base: Path) -> None:
        super().__init__(server, base)
        ports = _free_ports(5)
        self._servers, self._sentinels = ports[:2], ports[2:]
        self.sentinels: list[Addr] = [(HOST, p) for p in self._sentinels]
        addresses = ",".join(f"{h}:{p}" for h, p in self.sentinels)
        self.url = f"redis+sentinel://{addresses}/{self.service}"

    def start(self) -> None:
        primary, replica = self._servers
        for port, extra in ((primary, []), (replica, ["--replicaof", HOST, str(primary)])):
            cmd = [self._server, "--port", str(port), "--dir", "{dir}", *_COMMON, *extra]
            self._launch(port, "redis", cmd)
        for port in self._sentinels:
            conf = self._base / f"sentinel-{port}" / "sentinel.conf"  # sentinels rewrite it
            conf.parent.mkdir()
            conf.write_text(
                f"port {port}\nbind {HOST}\ndaemonize no\n"
                f"sentinel monitor {self.service} {HOST} {primary} 2\n"
                f"sentinel down-after-milliseconds {self.service} 1000\n"
                f"sentinel failover-timeout {self.service} 5000\n"
                f"sentinel parallel-syncs {self.service} 1\n"
            )
            self._launch(port, "sentinel", [self._server, str(conf), "--sentinel"])
        _wait("sentinels settled", lambda: self._settled(primary, replica), START_TIMEOUT)

    def _settled(self, master: int, replica: int) -> bool:
        """Roles and link as given, and every sentinel names ``master``, lists ``replica``
        and knows both other sentinels (hello-message discovery takes a few seconds)."""
        linked = _linked(self._replication(replica), master)
        if not (linked and _has_online_replica(self._replication(master))):
            return False
        for sentinel in (self._probe(port) for port in self._sentinels):
            state = sentinel.sentinel_master(self.service)
            seen = (state["ip"], int(state["port"]), int(state["num-other-sentinels"]))
            replicas = {int(r["port"]) for r in sentinel.sentinel_slaves(self.service)}
            if seen != (HOST, master, 2) or replica not in replicas:
                return False
        return True

    def master_address(self) -> Addr:
        """The master's address as the first answering sentinel gives it."""
        for port in self._sentinels:
            with contextlib.suppress(*_ERRORS):
                host, master = self._probe(port).sentinel_get_master_addr_by_name(self.service)
                return str(host), int(master)
        raise TopologyError(f"no sentinel of {self.sentinels} answered")

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new client for the master, found through the sentinels (close it)."""
        sentinel = Sentinel(self.sentinels, decode_responses=True)
        return sentinel.master_for(self.service, **{"decode_responses": True, **kwargs})

    def failover(self, timeout: float = 30.0) -> float:
        """SENTINEL FAILOVER; the seconds until every sentinel names the other server,
        which is master, and the old master is its replica with the link up.  Sentinels
        switch within ~1 s but convert a live old master only ~8 s later (it accepts
        writes meanwhile, which are then lost), so this takes ~10 s."""
        old = self.master_address()[1]
        new = next(p for p in self._servers if p != old)
        sentinel, start = self._probe(self._sentinels[0]), time.monotonic()
        ask = lambda: sentinel.sentinel_failover(self.service)  # noqa: E731  (-NOGOODSLAVE: again)
        _wait("SENTINEL FAILOVER accepted", ask, timeout)
        _wait(f"{new} master, {old} its replica", lambda: self._settled(new, old), timeout)
        return time.monotonic() - start

    def flushall(self) -> None:
        """FLUSHALL on the current master (private servers: allowed)."""
        self._probe(self.master_address()[1]).flushall()


def _running(make: Callable[[], Cluster | SentinelSetup], what: str) -> Iterator[Any]:
    """Start ``make()`` (again, on new ports, if that fails), yield it, stop it."""
    failures: list[str] = []
    for _ in range(_ATTEMPTS):
        topology = make()
        try:
            try:
                topology.start()
            except (TopologyError, subprocess.SubprocessError, *_ERRORS) as exc:
                failures.append(f"{exc}\n{topology._logs()}")
                continue
            yield topology
            return
        finally:
            topology.stop()
    pytest.fail(f"could not start the {what}:\n" + "\n\n".join(failures), pytrace=False)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A private Redis Cluster, 3 masters + 3 replicas (see ``Cluster``)."""
    server, cli = _binaries("redis-server", "redis-cli")
    yield from _running(lambda: Cluster(server, cli, tmp_path_factory.mktemp("cluster")), "cluster")


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSetup]:
    """A private primary + replica + 3 Sentinels for ``keystile-test`` (``SentinelSetup``)."""
    (server,) = _binaries("redis-server")
    make = lambda: SentinelSetup(server, tmp_path_factory.mktemp("sentinel"))  # noqa: E731
    yield from _running(make, "sentinel setup")
