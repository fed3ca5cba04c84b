"""The fault-injecting Redis proxy of tests/faults.py: its RESP framer, pass-through for
sync and asyncio clients, each fault kind (the command ran, its reply did not arrive as
sent), seeded fractions, the connection modes, and a ProxyGroup in front of a cluster.

No assertion is on elapsed time: a delayed reply is checked by order, and by a client
with a far shorter timeout giving up before it arrives."""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from subprocess import Popen
from urllib.parse import urlsplit

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

from . import polling
from .faults import Address, Framer, Proxy, ProxyGroup
from .services import free_port

WAIT = 5.0
HOST = "127.0.0.1"

# ------------------------------------------------------------------------ framer

REPLIES = [
    b"+OK\r\n",
    b"-ERR wrong\r\n",
    b":-42\r\n",
    b"$6\r\nab\r\ncd\r\n",  # a CRLF inside a bulk string is data
    b"$0\r\n\r\n",
    b"$-1\r\n",
    b"*-1\r\n",
    b"*0\r\n",
    b"*3\r\n:1\r\n*2\r\n$1\r\na\r\n*-1\r\n*1\r\n*0\r\n",
    b"_\r\n",
    b",1.5\r\n",
    b"#t\r\n",
    b"(3492890328409238509324850943850943825024385\r\n",
    b"!8\r\nSYNTAX x\r\n",
    b"=8\r\ntxt:abcd\r\n",
    b"%2\r\n+a\r\n*1\r\n:1\r\n+b\r\n%0\r\n",
    b"~2\r\n:1\r\n$1\r\nz\r\n",
    b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nm\r\n",
    b"|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n",  # an attribute belongs to the value after it
    b"*2\r\n|1\r\n+a\r\n+b\r\n:1\r\n:2\r\n",
    b"$?\r\n;2\r\nab\r\n;1\r\nc\r\n;0\r\n",
    b"*?\r\n:1\r\n*1\r\n:2\r\n~?\r\n.\r\n.\r\n",
]


def feed_in(chunks: list[bytes]) -> tuple[list[bytes], Framer]:
    framer = Framer()
    out = [reply for chunk in chunks for reply in framer.feed(chunk)]
    return out, framer


def test_framer_whole_stream() -> None:
    out, framer = feed_in([b"".join(REPLIES)])
    assert out == REPLIES
    assert framer.pending == 0 and not framer.raw


def test_framer_byte_at_a_time() -> None:
    stream = b"".join(REPLIES)
    out, framer = feed_in([stream[i : i + 1] for i in range(len(stream))])
    assert out == REPLIES
    assert framer.pending == 0


def test_framer_random_splits() -> None:
    stream = b"".join(REPLIES) * 3
    rng = random.Random(5)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(1, 40)))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
        assert feed_in(chunks)[0] == REPLIES * 3


def test_framer_deeply_nested_arrays() -> None:
    deep = b"*1\r\n" * 60 + b"*2\r\n$3\r\nend\r\n:0\r\n"
    wide = b"*3\r\n" + b"*2\r\n:1\r\n*1\r\n$-1\r\n" * 3
    stream = deep + wide + b"+after\r\n"
    assert feed_in([stream])[0] == [deep, wide, b"+after\r\n"]
    assert feed_in([bytes([b]) for b in stream])[0] == [deep, wide, b"+after\r\n"]


def test_framer_holds_an_incomplete_reply() -> None:
    framer = Framer()
    assert framer.feed(b"*2\r\n$5\r\nhel") == []
    assert framer.pending == len(b"*2\r\n$5\r\nhel")
    assert framer.feed(b"lo\r\n") == []
    assert framer.feed(b":1\r\n+next") == [b"*2\r\n$5\r\nhello\r\n:1\r\n"]
    assert framer.feed(b"\r\n") == [b"+next\r\n"]


@pytest.mark.parametrize("junk", [b"@what\r\n", b"$3\r\nabcd\r\n", b"*x\r\n", b".\r\n", b";1\r\n"])
def test_framer_turns_raw_on_bytes_that_are_not_resp(junk: bytes) -> None:
    framer = Framer()
    assert framer.feed(b"+OK\r\n" + junk + b"+more\r\n") == [b"+OK\r\n", junk + b"+more\r\n"]
    assert framer.raw
    assert framer.feed(b"anything") == [b"anything"]


# ------------------------------------------------------------------------ helpers


def no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


def client(url: str, **kwargs: object) -> redis.Redis:
    """No retries; RESP2 and no CLIENT SETINFO unless told: connecting sends nothing
    (redis-py 8 defaults to HELLO 3 + CLIENT MAINT_NOTIFICATIONS + SETINFO)."""
    kwargs.setdefault("socket_timeout", WAIT)
    kwargs.setdefault("protocol", 2)
    return redis.Redis.from_url(url, retry=no_retry(), driver_info=None, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def proxy(redis_url: str) -> Iterator[Proxy]:
    with Proxy(redis_url, seed=1) as p:
        yield p


@pytest.fixture
def direct(redis_url: str) -> Iterator[redis.Redis]:
    with client(redis_url) as c:
        yield c


def command(*args: str) -> bytes:
    out = f"*{len(args)}\r\n".encode()
    for arg in args:
        out += f"${len(arg.encode())}\r\n{arg}\r\n".encode()
    return out


def read_replies(sock: socket.socket, n: int) -> list[bytes]:
    """The next ``n`` replies on ``sock`` (TimeoutError if they do not come)."""
    framer, replies = Framer(), []
    while len(replies) < n:
        data = sock.recv(65536)
        assert data, "connection closed"
        replies += framer.feed(data)
    assert len(replies) == n and framer.pending == 0
    return replies


# ------------------------------------------------------------------- pass-through


def test_address_and_url(redis_url: str) -> None:
    host, port = urlsplit(redis_url).hostname or HOST, urlsplit(redis_url).port or 6379
    with Proxy((host, int(port))) as p, Proxy(f"redis://:pw@{host}:{port}/3?protocol=3") as q:
        assert p.target == (host, int(port))
        assert p.url == f"redis://127.0.0.1:{p.address[1]}/0"
        assert q.url == f"redis://:pw@127.0.0.1:{q.address[1]}/3?protocol=3"
        assert p.address[0] == "127.0.0.1" and p.address != q.address
    with Proxy(redis_url) as p:
        assert p.url.endswith("/" + redis_url.rsplit("/", 1)[1])
        with client(p.url) as c:
            assert c.ping()
    with pytest.raises(ConnectionRefusedError):  # closed at the end of the block
        socket.create_connection(p.address, timeout=WAIT).close()


@pytest.mark.parametrize("protocol", [2, 3])
def test_sync_pass_through(proxy: Proxy, direct: redis.Redis, redis_prefix: str, protocol: int):
    key = f"{redis_prefix}:sync"
    with client(proxy.url, protocol=protocol) as c:
        assert c.set(key, b"x\r\n" * 50_000)
        assert c.get(key) == b"x\r\n" * 50_000  # a bulk reply larger than one read
        with c.pipeline(transaction=True) as pipe:
            pipe.incr(f"{key}:n").incr(f"{key}:n").hset(f"{key}:h", "f", "v").hgetall(f"{key}:h")
            assert pipe.execute() == [1, 2, 1, {b"f": b"v"}]
        with c.pipeline(transaction=False) as pipe:
            for i in range(100):
                pipe.echo(str(i))
            assert pipe.execute() == [str(i).encode() for i in range(100)]
    assert direct.get(f"{key}:n") == b"2"
    assert proxy.replies >= 2 + 6 + 100  # plus the connection's own handshake
    assert proxy.injected == {"delay": 0, "drop": 0, "cut": 0}


def test_resp3_pass_through_with_pushes(proxy: Proxy, direct: redis.Redis, redis_prefix: str):
    key = f"{redis_prefix}:r3"
    with client(proxy.url, protocol=3) as c:
        c.hset(key, mapping={"a": "1", "b": "2"})
        assert c.hgetall(key) == {b"a": b"1", b"b": b"2"}  # a RESP3 map
        pubsub = c.pubsub()
        pubsub.subscribe(key)
        assert pubsub.get_message(timeout=WAIT)["type"] == "subscribe"
        before = proxy.replies
        direct.publish(key, "hello")
        message = pubsub.get_message(timeout=WAIT)
        assert message is not None and message["data"] == b"hello"
        assert proxy.replies == before + 1  # the push is a reply of its own
        pubsub.close()


def test_asyncio_pass_through(proxy: Proxy, direct: redis.Redis, redis_prefix: str) -> None:
    key = f"{redis_prefix}:async"

    async def main() -> list[object]:
        retry = redis.asyncio.retry.Retry(NoBackoff(), 0)
        c = redis.asyncio.Redis.from_url(proxy.url, retry=retry, socket_timeout=WAIT)
        try:
            await c.set(key, "v")
            together = await asyncio.gather(*(c.incr(f"{key}:n") for _ in range(20)))
            async with c.pipeline(transaction=True) as pipe:
                pipe.get(key).incr(f"{key}:n").lrange(f"{key}:none", 0, -1)
                return [sorted(together), *(await pipe.execute())]
        finally:
            await c.aclose()

    assert asyncio.run(main()) == [list(range(1, 21)), b"v", 21, []]
    assert direct.get(f"{key}:n") == b"21"


def test_made_and_driven_inside_a_running_event_loop(redis_url: str, redis_prefix: str):
    key = f"{redis_prefix}:inloop"

    async def main() -> list[object]:
        with Proxy(redis_url) as p:  # its own loop runs in its own thread
            retry = redis.asyncio.retry.Retry(NoBackoff(), 0)
            c = redis.asyncio.Redis.from_url(p.url, retry=retry, socket_timeout=WAIT)
            try:
                first = await c.incr(key)
                p.fail_next(1, "cut")
                with pytest.raises(redis.ConnectionError):
                    await c.incr(key)
                p.cut()
                return [first, await c.incr(key), p.injected["cut"]]
            finally:
                await c.aclose()

    assert asyncio.run(main()) == [1, 3, 1]


# ------------------------------------------------------------------------- faults


def test_drop_times_out_but_the_command_ran(proxy: Proxy, direct: redis.Redis, redis_prefix):
    key = f"{redis_prefix}:drop"
    with client(proxy.url, socket_timeout=0.2) as c:
        c.ping()
        proxy.fail_next(1, "drop")
        with pytest.raises(redis.TimeoutError):
            c.incr(key)
        assert direct.get(key) == b"1"
        assert proxy.injected["drop"] == 1
        assert c.incr(key) == 2  # the client threw the connection away and made a new one
    assert direct.get(key) == b"2"


def test_cut_loses_the_reply_of_a_command_that_ran(proxy, direct: redis.Redis, redis_prefix):
    key = f"{redis_prefix}:cut"
    with client(proxy.url) as c:
        c.ping()
        proxy.fail_next(1, "cut")
        with pytest.raises(redis.ConnectionError):
            c.incr(key)
        assert direct.get(key) == b"1"
        assert proxy.injected["cut"] == 1
        assert c.incr(key) == 2


def test_delay_holds_the_reply_and_those_after_it(proxy: Proxy, redis_prefix: str) -> None:
    key = f"{redis_prefix}:delay"
    with socket.create_connection(proxy.address, timeout=WAIT) as sock:
        proxy.fail_next(1, "delay", delay=0.5)
        sock.sendall(command("INCR", key) * 3)
        sock.settimeout(0.05)  # far shorter than the delay: gives up before any reply
        with pytest.raises(TimeoutError):
            sock.recv(65536)
        sock.settimeout(WAIT)
        assert read_replies(sock, 3) == [b":1\r\n", b":2\r\n", b":3\r\n"]
    assert proxy.injected["delay"] == 1 and proxy.replies == 3


def test_delayed_replies_keep_their_order_for_a_pipeline(proxy: Proxy, redis_prefix: str):
    key = f"{redis_prefix}:order"
    with client(proxy.url) as c:
        c.ping()
        proxy.fail_next(2, "delay", delay=0.05)
        with c.pipeline(transaction=False) as pipe:
            for i in range(5):
                pipe.rpush(key, str(i))
            assert pipe.execute() == [1, 2, 3, 4, 5]
        assert c.lrange(key, 0, -1) == [b"0", b"1", b"2", b"3", b"4"]
    assert proxy.injected["delay"] == 2


def test_fail_next_queues_and_clear_forgets(proxy: Proxy) -> None:
    proxy.fail_next(1, "delay", delay=0.0)
    proxy.fail_next(2, "drop")
    with socket.create_connection(proxy.address, timeout=WAIT) as sock:
        sock.sendall(command("ECHO", "a") + command("ECHO", "b") + command("ECHO", "c"))
        sock.sendall(command("ECHO", "d"))
        assert read_replies(sock, 2) == [b"$1\r\na\r\n", b"$1\r\nd\r\n"]
        proxy.fail_next(5, "drop")
        proxy.clear()
        sock.sendall(command("PING"))
        assert read_replies(sock, 1) == [b"+PONG\r\n"]
    assert proxy.injected == {"delay": 1, "drop": 2, "cut": 0}
    with pytest.raises(ValueError):
        proxy.fail_next(1, "explode")
    with pytest.raises(ValueError):
        proxy.faults(drop_fraction=0.6, cut_fraction=0.6)


def echo_through(p: Proxy, n: int) -> list[int]:
    """Send ECHO 0..n-1 on one connection; the numbers whose reply came back, in order."""
    with socket.create_connection(p.address, timeout=WAIT) as sock:
        sock.sendall(b"".join(command("ECHO", str(i)) for i in range(n)))
        assert polling.eventually(lambda: p.replies + p.injected["drop"] == n, WAIT)
        return [int(r.split(b"\r\n")[1]) for r in read_replies(sock, p.replies)]


def test_seeded_drops_hit_about_their_share_and_repeat(redis_url: str) -> None:
    runs = []
    for seed in (42, 42, 43):
        with Proxy(redis_url, seed=seed) as p:
            p.faults(drop_fraction=0.1, delay_fraction=0.1, delay=0.0)
            got = echo_through(p, 1000)
            assert got == sorted(got)  # in order, with gaps
            assert 50 <= p.injected["drop"] <= 150 and 50 <= p.injected["delay"] <= 150
            assert len(got) == p.replies == 1000 - p.injected["drop"]
            runs.append(got)
    assert runs[0] == runs[1] != runs[2]


def test_seeded_cuts_hit_about_their_share(proxy: Proxy) -> None:
    proxy.faults(cut_fraction=0.1)
    errors = 0
    with client(proxy.url) as c:  # RESP2, no SETINFO: a connection sends nothing else
        for _ in range(1000):
            try:
                c.ping()
            except redis.ConnectionError:
                errors += 1  # the next command connects again
    assert 50 <= errors <= 150
    assert errors == proxy.injected["cut"] and proxy.replies == 1000 - errors


def test_delay_fraction_slows_some_replies_of_a_pipeline(proxy: Proxy) -> None:
    proxy.faults(delay_fraction=0.1, delay=0.001)
    with client(proxy.url) as c, c.pipeline(transaction=False) as pipe:
        for i in range(1000):
            pipe.echo(str(i))
        assert pipe.execute() == [str(i).encode() for i in range(1000)]
    assert 50 <= proxy.injected["delay"] <= 150
    assert proxy.replies == 1000


# -------------------------------------------------------------------------- modes


def test_refuse_blackhole_and_cut(proxy: Proxy, direct: redis.Redis, redis_prefix: str):
    key = f"{redis_prefix}:modes"
    with client(proxy.url) as c:
        assert c.incr(key) == 1
        proxy.mode = "refuse"
        assert c.incr(key) == 2  # a link made before goes on
        proxy.cut()
        with pytest.raises(redis.ConnectionError):
            c.incr(key)  # cut
        with pytest.raises(redis.ConnectionError):
            c.incr(key)  # refused
        proxy.mode = "blackhole"
        with client(proxy.url, socket_timeout=0.2) as quiet, pytest.raises(redis.TimeoutError):
            quiet.incr(key)
        assert direct.get(key) == b"3"  # the command got through, the reply did not
        proxy.mode = "pass"
        assert c.incr(key) == 4
    with pytest.raises(ValueError):
        proxy.mode = "sideways"


# ------------------------------------------------------------------------ cluster


def test_group_address_remap() -> None:
    p1, p2 = free_port(), free_port()
    with ProxyGroup([("localhost", p1), ("127.0.0.1", p2)], seed=3) as group:
        a1, a2 = group.addresses
        assert group.address_remap(("127.0.0.1", p1)) == a1  # "localhost" resolved
        assert group.address_remap(("localhost", p2)) == a2
        assert group.address_remap(("10.9.8.7", p2)) == a2  # unique port: same node
        assert group.address_remap(a1) == a1  # already a proxy
        assert group.address_remap(("127.0.0.1", 1)) == ("127.0.0.1", 1)  # not proxied
        assert group.proxy_for(("127.0.0.1", p2)) is group.proxies[1]
        group.mode = "refuse"
        assert group.mode == "refuse"


def start_nodes(binary: str, workdir: Path, n: int) -> tuple[list[Address], list[Popen]]:
    """``n`` cluster-enabled redis-servers on free ports, answering PING; retried on new
    ports if one exits (its port was taken meanwhile)."""
    for _ in range(3):
        nodes = [("127.0.0.1", cluster_port()) for _ in range(n)]
        procs = [spawn_node(binary, workdir, port) for _, port in nodes]

        def up(nodes: list[Address] = nodes, procs: list[Popen] = procs) -> bool:
            return any(p.poll() is not None for p in procs) or all(map(answers, nodes))

        if polling.eventually(up, 10) and all(p.poll() is None for p in procs):
            return nodes, procs
        stop(procs)
    logs = "\n".join(f.read_text()[-2000:] for f in workdir.glob("redis-*.log"))
    pytest.fail(f"could not start {n} cluster nodes:\n{logs}", pytrace=False)


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too, both below the ephemeral
    range (redis-server refuses ports above 55535 with cluster-enabled)."""
    while True:
        port = random.randint(10000, 22767)
        try:
            with socket.create_server((HOST, port)), socket.create_server((HOST, port + 10000)):
                return port
        except OSError:
            continue


def answers(address: Address) -> bool:
    """PING answered (no retries: redis_error's default client backs off for seconds)."""
    try:
        with client(f"redis://{address[0]}:{address[1]}/0", socket_connect_timeout=0.5) as c:
            return bool(c.ping())
    except redis.RedisError:
        return False


def spawn_node(binary: str, workdir: Path, port: int) -> Popen:
    cmd = [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
        "--dir", str(workdir), "--logfile", f"redis-{port}.log",
    ]  # fmt: skip
    return Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def stop(procs: list[Popen]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Address]]:
    """A private 3-master Redis Cluster without replicas (about 2 s to turn "ok")."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not on PATH")
    nodes, procs = start_nodes(binary, tmp_path_factory.mktemp("cluster"), 3)
    try:
        clients = [client(f"redis://{h}:{p}/0") for h, p in nodes]
        for i, c in enumerate(clients):
            c.execute_command("CLUSTER ADDSLOTSRANGE", i * 16384 // 3, (i + 1) * 16384 // 3 - 1)
            c.execute_command("CLUSTER MEET", *nodes[0])

        def ready() -> bool:
            return all(
                c.cluster("info")["cluster_state"] == "ok" and len(c.cluster("slots")) == 3
                for c in clients
            )

        assert polling.eventually(ready, 20), "cluster did not come up"
        for c in clients:
            c.close()
        yield nodes
    finally:
        stop(procs)


def test_group_in_front_of_a_cluster(cluster: list[Address]) -> None:
    prefix = f"kst-{uuid.uuid4().hex[:12]}"
    with ProxyGroup(cluster, seed=9) as group:
        rc = RedisCluster(
            startup_nodes=[ClusterNode(*group.addresses[0])],
            address_remap=group.address_remap,
            socket_timeout=WAIT,
            retry=Retry(NoBackoff(), 3),
        )
        try:
            assert sorted(n.port for n in rc.get_nodes()) == sorted(p for _, p in group.addresses)
            keys = [f"{prefix}:{i}" for i in range(30)]
            for key in keys:
                rc.set(key, key)
            assert [rc.get(k) for k in keys] == [k.encode() for k in keys]
            assert all(p.replies > 0 for p in group.proxies)  # every node is reached via its proxy
            before = group.replies
            group.faults(delay_fraction=1.0, delay=0.0)
            assert rc.get(keys[0]) == keys[0].encode()
            assert group.injected["delay"] == 1 and group.replies == before + 1
            group.clear()
            group.cut()
            assert rc.get(keys[1]) == keys[1].encode()  # reconnected, still through the proxies
            assert group.replies > before + 1
            counter = f"{prefix}:n"
            assert rc.get(counter) is None  # its node's link is up: the cut hits the INCR
            node = rc.get_node_from_key(counter)
            group.proxy_for((node.host, node.port)).fail_next(1, "cut")
            ran = rc.incr(counter)  # the cluster client retries after the cut: INCR runs again
            assert group.injected["cut"] == 1
            assert ran == 2 and rc.get(counter) == b"2"
        finally:
            rc.close()

        async def main() -> list[bytes | None]:
            arc = redis.asyncio.cluster.RedisCluster(
                host=group.addresses[1][0],
                port=group.addresses[1][1],
                address_remap=group.address_remap,
            )
            try:
                await arc.initialize()
                assert {n.port for n in arc.get_nodes()} == {p for _, p in group.addresses}
                return list(await asyncio.gather(*(arc.get(k) for k in keys)))
            finally:
                await arc.aclose()

        replies = group.replies
        assert asyncio.run(main()) == [k.encode() for k in keys]
        assert group.replies >= replies + len(keys)
