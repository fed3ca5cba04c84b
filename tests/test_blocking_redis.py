"""BlockingRedis (keystile's blocking client of one server) against real Redis: replies,
scripts, errors, faults from a TCP proxy, threads, fork, auth, unix sockets and TLS."""

from __future__ import annotations

import gc
import os
import socket
import sys
import threading
import uuid
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.exceptions as rx

from keystile import Keystile
from keystile._redis.blocking import BlockingRedis, _kernel_timeouts
from keystile._redis.endpoint import endpoint_of
from keystile._redis.multiplex import LuaScript
from keystile._redis.replies import pack

from .faults import Proxy
from .services import free_port
from .test_multiplex import auth_redis, tls_redis  # noqa: F401  (fixtures)

pytestmark = pytest.mark.redis


@pytest.fixture
def client(redis_url: str) -> Iterator[BlockingRedis]:
    made = BlockingRedis(redis_url, timeout=5.0)
    yield made
    made.close()


@pytest.fixture
def key(redis_url: str, redis_prefix: str) -> Iterator[str]:
    name = f"{redis_prefix}:blocking:{uuid.uuid4().hex}"
    yield name
    redis.Redis.from_url(redis_url).delete(name)


def sockets_of(client: BlockingRedis) -> list[Any]:
    return [conn.sock for conn in client._idle]


# ------------------------------------------------------------------------- replies


def test_replies_as_redis_sends_them(client: BlockingRedis, key: str) -> None:
    assert client.execute_command("GET", key) is None
    assert client.execute_command("SET", key, "välue", "EX", 100) == "OK"
    assert client.execute_command("GET", key) == "välue"
    assert client.execute_command("DEL", key) == 1
    assert client.execute_command("HSET", key, "a", 1, "b", "x") == 2
    assert client.execute_command("HGETALL", key) == ["a", "1", "b", "x"]  # not a dict


def test_a_reply_larger_than_one_read(client: BlockingRedis, key: str) -> None:
    value = "v" * 300_000
    assert client.execute_command("SET", key, value) == "OK"
    assert client.execute_command("GET", key) == value


def test_bytes_when_not_decoding(redis_url: str, key: str) -> None:
    raw = BlockingRedis(redis_url, timeout=5.0, decode_responses=False)
    try:
        raw.execute_command("SET", key, b"\xff\x00")
        assert raw.execute_command("GET", key) == b"\xff\x00"
    finally:
        raw.close()


def test_an_undecodable_reply_fails_that_command_only(client: BlockingRedis, key: str) -> None:
    client.execute_command("SET", key, b"\xff\xfe")
    with pytest.raises(rx.DataError, match="UTF-8"):
        client.execute_command("GET", key)
    assert client.execute_command("PING") == "PONG"


def test_an_error_reply_raises_and_keeps_the_connection(client: BlockingRedis, key: str) -> None:
    client.execute_command("SET", key, "text")
    client.execute_command("PING")
    (sock,) = sockets_of(client)
    with pytest.raises(rx.ResponseError, match="not an integer"):
        client.execute_command("INCR", key)
    assert sockets_of(client) == [sock]  # the stream is still in step: kept
    assert client.execute_command("GET", key) == "text"


@pytest.mark.parametrize("args", [(), ("SET", "k", None), ("SET", "k", True)])
def test_what_redis_py_refuses_is_refused_before_sending(
    client: BlockingRedis, args: tuple[Any, ...]
) -> None:
    with pytest.raises(rx.DataError):
        client.execute_command(*args)
    assert client.execute_command("PING") == "PONG"


# ------------------------------------------------------------------------- scripts


def test_evalsha_loads_a_script_redis_does_not_know(client: BlockingRedis, key: str) -> None:
    script = LuaScript(f"-- {uuid.uuid4().hex}\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])")
    assert client.execute_command("SCRIPT", "EXISTS", script.sha) == [0]
    assert client.evalsha(script, [key], [5]) == 5  # NOSCRIPT, then SCRIPT LOAD, once
    assert client.execute_command("SCRIPT", "EXISTS", script.sha) == [1]
    assert client.evalsha(script, [key], [2]) == 7


def test_a_failing_script_raises_its_error(client: BlockingRedis) -> None:
    script = LuaScript("return redis.error_reply('KS_TEST failed as written')")
    with pytest.raises(rx.ResponseError, match="KS_TEST failed as written"):
        client.evalsha(script, [], [])


# ------------------------------------------------------------------------- faults


def test_a_refused_port_is_a_connection_error() -> None:
    dead = BlockingRedis(f"redis://127.0.0.1:{free_port()}/0", timeout=2.0)
    with pytest.raises(rx.ConnectionError, match="error connecting"):
        dead.execute_command("PING")


def test_a_late_reply_times_out_and_its_connection_is_dropped(redis_url: str) -> None:
    with Proxy(redis_url) as proxy:
        slow = BlockingRedis(proxy.url, timeout=0.3)
        try:
            assert slow.execute_command("PING") == "PONG"
            proxy.fail_next(1, "delay", delay=1.0)
            with pytest.raises(rx.TimeoutError, match=r"within 0\.3 s"):
                slow.execute_command("ECHO", "late")
            assert sockets_of(slow) == []  # its late reply must not answer the next command
            assert slow.execute_command("ECHO", "next") == "next"
        finally:
            slow.close()


def test_a_cut_link_is_a_connection_error_then_reconnects(redis_url: str) -> None:
    with Proxy(redis_url) as proxy:
        cut = BlockingRedis(proxy.url, timeout=2.0)
        try:
            assert cut.execute_command("PING") == "PONG"
            proxy.fail_next(1, "cut")
            with pytest.raises(rx.ConnectionError):
                cut.execute_command("PING")
            assert sockets_of(cut) == []
            assert cut.execute_command("PING") == "PONG"
        finally:
            cut.close()


def test_an_engine_with_a_lost_reply_refuses_with_503_not_a_traceback(
    redis_url: str, redis_prefix: str
) -> None:
    with Proxy(redis_url) as proxy:
        ks = Keystile({
            "store": "memory://", "redis_url": proxy.url, "redis_prefix": redis_prefix,
            "secret": "blocking-secret-0123456789", "redis_timeout": 0.3,
            "argon2": {"time_cost": 1, "memory_cost": 8, "parallelism": 1},
        })  # fmt: skip
        try:
            token = ks.keys.create("acct_blocking", "b").token
            principal = ks.authenticate([("authorization", f"Bearer {token}")])
            ks.settle(principal, 200)
            proxy.mode = "blackhole"
            with pytest.raises(Exception) as raised:
                ks.authenticate([("authorization", f"Bearer {token}")])
            assert getattr(raised.value, "spec", None) is not None
            assert raised.value.spec.code == "SVC_001"  # type: ignore[attr-defined]
            assert token not in repr(raised.value) and token not in str(raised.value)
        finally:
            proxy.mode = "pass"
            ks.close()


# ------------------------------------------------------------------------- threads, fork


def test_threads_never_share_a_connection(client: BlockingRedis, key: str) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(200):
                value = f"{n}-{i}"
                assert client.execute_command("ECHO", value) == value
                client.execute_command("INCR", key)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert client.execute_command("GET", key) == "1600"
    assert 1 <= len(client._idle) <= 8


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_opens_its_own_connection(client: BlockingRedis) -> None:
    client.execute_command("PING")
    parent_id = client.execute_command("CLIENT", "ID")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a new connection, not the parent's socket
        try:
            child_id = client.execute_command("CLIENT", "ID")
            os.write(write, str(child_id).encode())
        finally:
            os._exit(0)
    os.close(write)
    child_id = int(os.read(read, 64) or b"0")
    os.close(read)
    os.waitpid(pid, 0)
    assert child_id not in (0, parent_id)
    assert client.execute_command("CLIENT", "ID") == parent_id  # the parent's is intact


def test_close_closes_idle_connections_and_a_later_command_reconnects(
    client: BlockingRedis,
) -> None:
    client.execute_command("PING")
    (sock,) = sockets_of(client)
    client.close()
    assert sock.fileno() == -1 and client._idle == []
    assert client.execute_command("PING") == "PONG"


# ------------------------------------------------------------- auth, db, unix, TLS


def client_info(url: str) -> str:
    """``CLIENT INFO`` over a new client of ``url`` (its db, its connection)."""
    lean = BlockingRedis(url, timeout=5.0)
    try:
        return str(lean.execute_command("CLIENT", "INFO"))
    finally:
        lean.close()


def test_password_and_db_from_the_url(auth_redis: tuple[int, Path]) -> None:  # noqa: F811
    port, _ = auth_redis
    for auth in (":pw@", "default:pw@"):
        assert "db=3" in client_info(f"redis://{auth}127.0.0.1:{port}/3")


def test_a_wrong_or_missing_password_fails(auth_redis: tuple[int, Path]) -> None:  # noqa: F811
    port, _ = auth_redis
    wrong = BlockingRedis(f"redis://:nope@127.0.0.1:{port}/0", timeout=5.0)
    with pytest.raises(rx.AuthenticationError):
        wrong.execute_command("PING")
    assert wrong._idle == []  # a failed handshake closes its connection
    missing = BlockingRedis(f"redis://127.0.0.1:{port}/0", timeout=5.0)
    with pytest.raises(rx.AuthenticationError):  # NOAUTH: an error reply, not a hang
        missing.execute_command("PING")
    missing.close()


def test_unix_socket_url(auth_redis: tuple[int, Path]) -> None:  # noqa: F811
    _, sock = auth_redis
    assert "db=2" in client_info(f"unix://:pw@{sock}?db=2")


def test_rediss_url(tls_redis: tuple[int, Path]) -> None:  # noqa: F811
    port, cert = tls_redis
    for url in (
        f"rediss://127.0.0.1:{port}/4?ssl_cert_reqs=none",
        f"rediss://localhost:{port}/4?ssl_ca_certs={cert}",
        f"rediss://127.0.0.1:{port}/4?ssl_ca_certs={cert}&ssl_check_hostname=false",
    ):
        assert "db=4" in client_info(url)
    strict = BlockingRedis(f"rediss://127.0.0.1:{port}/0", timeout=5.0)
    with pytest.raises(rx.ConnectionError):  # a self-signed certificate is refused
        strict.execute_command("PING")
    named = BlockingRedis(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}", timeout=5.0)
    with pytest.raises(rx.ConnectionError):  # trusted, but not issued for 127.0.0.1
        named.execute_command("PING")


def test_an_endpoints_repr_holds_no_password() -> None:
    endpoint = endpoint_of("redis://user:s3cret-pw@127.0.0.1:6390/2")
    assert endpoint.password == "s3cret-pw"
    assert "s3cret" not in repr(endpoint) and "s3cret" not in str(endpoint)
    lean = BlockingRedis("redis://user:s3cret-pw@127.0.0.1:6390/2", timeout=1.0)
    assert "s3cret" not in repr(vars(lean))


def test_dead_idle_connections_cost_one_failure_not_one_each(redis_url: str) -> None:
    """After a restart (here: its connections killed) the first command fails and takes
    the other idle connections with it; the next gets a new connection."""
    client = BlockingRedis(redis_url, timeout=5.0)
    admin = redis.Redis.from_url(redis_url)
    try:
        client._idle.extend(client._open() for _ in range(3))
        ids = [conn.call(pack(("CLIENT", "ID"))) for conn in client._idle]
        for client_id in ids:
            admin.execute_command("CLIENT", "KILL", "ID", client_id)
        with pytest.raises(rx.ConnectionError):
            client.execute_command("PING")
        assert client._idle == []
        assert client.execute_command("PING") == "PONG"
    finally:
        client.close()
        admin.close()


def test_the_gateways_retry_heals_after_the_connections_die(redis_settings: Any) -> None:
    ks = Keystile({**redis_settings, "store": "memory://"})
    admin = redis.Redis.from_url(redis_settings["redis_url"])
    try:
        assert ks.redis is not None
        lean = ks.redis.sync.commands
        assert isinstance(lean, BlockingRedis)
        lean._idle.extend(lean._open() for _ in range(3))
        for conn in lean._idle:
            admin.execute_command("CLIENT", "KILL", "ID", conn.call(pack(("CLIENT", "ID"))))
        ks.redis.ping()  # one failure, then the retry on a new connection
    finally:
        ks.close()
        admin.close()


def test_an_error_leaves_no_reference_cycle(client: BlockingRedis, key: str) -> None:
    # Each error is freed by its reference count the moment it is let go: a cycle through its
    # traceback would keep it until a collection. (Per object, so what other threads of the
    # suite leave to the collector meanwhile does not count.)
    client.execute_command("SET", key, "text")
    dead = BlockingRedis(f"redis://127.0.0.1:{free_port()}/0", timeout=1.0)
    gc.disable()
    try:
        for _ in range(5):
            for fail in (
                lambda: client.execute_command("INCR", key),
                lambda: dead.execute_command("PING"),
            ):
                try:
                    fail()
                except rx.RedisError as exc:
                    error = weakref.ref(exc)
                assert error() is None
    finally:
        gc.enable()


class _RecordingSockets:
    """The socket module as ``keystile._redis.blocking`` sees it, keeping each socket it
    makes: only this client's sockets are looked at, not what the rest of the suite leaves
    to the collector."""

    def __init__(self) -> None:
        self.made: list[socket.socket] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(socket, name)

    def socket(self, *args: Any) -> socket.socket:
        made = socket.socket(*args)
        self.made.append(made)
        return made


def test_a_failed_unix_connect_leaves_no_socket_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from keystile._redis import blocking

    sockets = _RecordingSockets()
    monkeypatch.setattr(blocking, "socket", sockets)
    lean = BlockingRedis(f"unix://{tmp_path / 'absent.sock'}", timeout=1.0)
    with pytest.raises(rx.ConnectionError):
        lean.execute_command("PING")
    assert sockets.made  # the connect was tried, on a socket of its own
    assert [made for made in sockets.made if made.fileno() != -1] == []


def test_a_patched_socket_keeps_pythons_timeouts() -> None:
    class GreenSocket(socket.socket):  # as gevent's and eventlet's: not the socket module's
        pass

    plain, green = socket.socket(), GreenSocket()
    try:
        assert _kernel_timeouts(plain) == sys.platform.startswith("linux")
        assert not _kernel_timeouts(green)
    finally:
        plain.close()
        green.close()


def test_an_engine_on_one_server_uses_it_for_the_request_path(redis_settings: Any) -> None:
    ks = Keystile({**redis_settings, "argon2": {"time_cost": 1, "memory_cost": 8,
                                                 "parallelism": 1}})  # fmt: skip
    try:
        assert ks.redis is not None
        lean = ks.redis.sync.commands
        assert isinstance(lean, BlockingRedis)
        sent: list[str] = []
        original = lean.execute_command

        def spy(*args: Any) -> Any:
            sent.append(str(args[0]))
            return original(*args)

        lean.execute_command = spy  # type: ignore[method-assign]
        token = ks.keys.create("acct_blocking", "b").token
        principal = ks.authenticate([("authorization", f"Bearer {token}")])
        ks.settle(principal, 200)
        principal = ks.authenticate([("authorization", f"Bearer {token}")])
        assert sent[-1] == "EVALSHA"  # the warm request's one meter call
    finally:
        ks.close()
