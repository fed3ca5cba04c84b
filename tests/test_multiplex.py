"""RedisMultiplexer against real Redis: round trips, coalescing, scripts, faults, auth.

Faults come from ``FaultProxy``, a small TCP proxy in front of the real Redis that can
pass, delay or drop (blackhole) replies, or cut its connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import redis
import redis.exceptions as rx

from keystile._redis import multiplex
from keystile._redis.multiplex import LuaScript, RedisMultiplexer

from .services import free_port, redis_error, service_missing

pytestmark = pytest.mark.redis


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextlib.asynccontextmanager
async def multiplexer(url: str, timeout: float = 5.0, **kw: Any) -> AsyncIterator[RedisMultiplexer]:
    client = RedisMultiplexer(url, timeout=timeout, **kw)
    try:
        yield client
    finally:
        await client.aclose()


def count_writes(client: RedisMultiplexer) -> list[bytes]:
    """Wrap the connected client's ``transport.write``; returns the list of written chunks."""
    conn = client._conn
    assert conn is not None and conn.transport is not None
    transport = conn.transport
    writes: list[bytes] = []
    real_write = transport.write

    def write(data: Any) -> None:
        writes.append(bytes(data))
        real_write(data)

    transport.write = write  # type: ignore[method-assign]
    return writes


# ----------------------------------------------------------------------- fault proxy


class FaultProxy:
    """Forwards 127.0.0.1:<port> to Redis; ``mode`` is "pass", "delay" (by ``delay`` s)
    or "drop" (a link that drops once stays blackholed, like a dead network path).
    :meth:`stall_open_links` blackholes the links open now, not those made after."""

    def __init__(self, target_url: str) -> None:
        parsed = urlparse(target_url)
        self.target = (parsed.hostname or "127.0.0.1", parsed.port or 6379)
        self.mode = "pass"
        self.delay = 0.0
        self.links: list[asyncio.Transport] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None
        self.port = 0
        self.accepted = 0  # connections accepted so far
        self._open: list[list[bool]] = []  # per link: [stalled]

    def url(self, db: int = 0, auth: str = "") -> str:
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    async def __aenter__(self) -> FaultProxy:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        self.cut()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()

    def stall_open_links(self) -> None:
        for link in self._open:
            link[0] = True

    def cut(self) -> None:
        """Reset every open link (both sides)."""
        for transport in self.links:
            transport.abort()
        self.links.clear()

    async def _link(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            ureader, uwriter = await asyncio.open_connection(*self.target)
            self.links += [cwriter.transport, uwriter.transport]  # type: ignore[list-item]
            link = [False]
            self._open.append(link)
            pumps = [
                asyncio.ensure_future(self._pump(creader, uwriter, replies=False)),
                asyncio.ensure_future(self._pump(ureader, cwriter, replies=True, link=link)),
            ]
            self.tasks.update(pumps)  # cancelled at exit, not this task (streams logs that)
            await asyncio.gather(*pumps, return_exceptions=True)
            self.tasks.difference_update(pumps)
        finally:
            cwriter.transport.abort()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        replies: bool,
        link: list[bool] | None = None,
    ) -> None:
        blackholed = False
        try:
            while data := await reader.read(65536):
                if replies and (blackholed or self.mode == "drop" or (link and link[0])):
                    blackholed = True
                    continue
                if replies and self.mode == "delay":
                    await asyncio.sleep(self.delay)  # in line: keeps the byte order
                writer.write(data)
        finally:
            writer.transport.abort()


# ------------------------------------------------------------------------ round trips


@pytest.mark.anyio
async def test_round_trips_decode_nil_ints_and_nested_arrays(
    redis_url: str, redis_prefix: str
) -> None:
    key, hkey = f"{redis_prefix}:s", f"{redis_prefix}:h"
    async with multiplexer(redis_url) as client:
        assert await client.execute_command("GET", key) is None
        assert await client.execute_command("SET", key, "välue", "EX", 100) == "OK"
        assert await client.execute_command("GET", key) == "välue"
        assert await client.execute_command("INCR", f"{redis_prefix}:n") == 1
        assert await client.execute_command("INCRBY", f"{redis_prefix}:n", 41) == 42
        assert await client.execute_command("SET", f"{redis_prefix}:f", 1.5) == "OK"
        assert await client.execute_command("GET", f"{redis_prefix}:f") == "1.5"
        assert await client.execute_command("HSET", hkey, "a", "1", "b", b"2") == 2
        assert await client.execute_command("HGETALL", hkey) in (
            ["a", "1", "b", "2"],
            ["b", "2", "a", "1"],
        )
        nested = LuaScript(f"-- {uuid.uuid4()}\nreturn {{1, {{2, 'x', {{}}}}, false, 'y'}}")
        assert await client.evalsha(nested, [], []) == [1, [2, "x", []], None, "y"]
        assert await client.execute_command("MGET", key, f"{redis_prefix}:missing") == [
            "välue",
            None,
        ]

    async with multiplexer(redis_url, decode_responses=False) as raw:
        assert await raw.execute_command("GET", key) == "välue".encode()
        assert await raw.execute_command("HGET", hkey, "b") == b"2"


@pytest.mark.anyio
async def test_invalid_arguments_raise_data_error_and_keep_the_connection(redis_url: str) -> None:
    async with multiplexer(redis_url) as client:
        assert await client.execute_command("PING") == "PONG"
        conn = client._conn
        with pytest.raises(rx.DataError):
            await client.execute_command()
        with pytest.raises(rx.DataError):
            await client.execute_command("GET", None)  # type: ignore[arg-type]
        assert await client.execute_command("ECHO", "still aligned") == "still aligned"
        assert client._conn is conn


@pytest.mark.anyio
async def test_invalid_utf8_reply_fails_only_that_command(
    redis_url: str, redis_prefix: str
) -> None:
    key = f"{redis_prefix}:bin"
    async with multiplexer(redis_url) as client:
        await client.execute_command("SET", key, b"\xff\xfe")
        conn = client._conn
        results: tuple[Any, ...] = await asyncio.gather(
            client.execute_command("GET", key),
            client.execute_command("ECHO", "next"),
            return_exceptions=True,
        )
        assert isinstance(results[0], rx.DataError) and results[1] == "next"
        assert client._conn is conn


@pytest.mark.anyio
async def test_no_false_timeouts_when_idle_or_busy_past_the_timeout(redis_url: str) -> None:
    """The one reply timer is re-armed correctly: only an overdue reply trips it."""
    async with multiplexer(redis_url, timeout=0.2) as client:
        assert await client.execute_command("PING") == "PONG"
        conn = client._conn
        await asyncio.sleep(0.5)  # idle longer than the timeout
        loop = asyncio.get_running_loop()
        until = loop.time() + 0.6
        n = 0
        while loop.time() < until:  # one command after another, longer than the timeout
            assert await client.execute_command("ECHO", str(n)) == str(n)
            n += 1
        assert client._conn is conn and conn is not None and conn.lost is None


@pytest.mark.anyio
async def test_concurrent_incr_is_coalesced_into_few_writes(
    redis_url: str, redis_prefix: str
) -> None:
    key = f"{redis_prefix}:counter"
    async with multiplexer(redis_url) as client:
        assert await client.execute_command("PING") == "PONG"  # connected: writes countable
        writes = count_writes(client)
        results = await asyncio.gather(*(client.execute_command("INCR", key) for _ in range(2000)))
        assert sorted(results) == list(range(1, 2001))
        assert await client.execute_command("GET", key) == "2000"
        assert 1 <= len(writes) < 200
        assert b"".join(writes).count(b"INCR") == 2000


@pytest.mark.anyio
async def test_first_commands_share_one_connection_attempt(redis_url: str) -> None:
    async with FaultProxy(redis_url) as proxy, multiplexer(proxy.url()) as client:
        tasks = [asyncio.ensure_future(client.execute_command("ECHO", str(i))) for i in range(20)]
        await asyncio.sleep(0)  # all of them are now waiting for the one connection attempt
        tasks[0].cancel()  # a cancelled waiter must not cancel the attempt for the others
        assert await asyncio.gather(*tasks[1:]) == [str(i) for i in range(1, 20)]
        assert await client.execute_command("PING") == "PONG"
        assert proxy.accepted == 1


# ---------------------------------------------------------------------------- scripts


@pytest.mark.anyio
async def test_evalsha_loads_an_unknown_script_and_retries_once(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = LuaScript(
        f"-- {uuid.uuid4()}\nreturn {{KEYS[1], ARGV[1], redis.call('INCRBY', KEYS[1], ARGV[2])}}"
    )
    key = f"{redis_prefix}:lua"
    async with multiplexer(redis_url) as client:
        calls: list[tuple[Any, ...]] = []
        real = client.execute_command

        async def counting(*args: Any) -> Any:
            calls.append(args[:2] if args[0] == "SCRIPT" else args[:1])
            return await real(*args)

        monkeypatch.setattr(client, "execute_command", counting)
        assert await client.evalsha(script, [key], ["tag", 5]) == [key, "tag", 5]
        assert calls == [("EVALSHA",), ("SCRIPT", "LOAD"), ("EVALSHA",)]
        calls.clear()
        assert await client.evalsha(script, [key], ["tag", 2]) == [key, "tag", 7]
        assert calls == [("EVALSHA",)]


@pytest.mark.anyio
async def test_noscript_is_redis_pys_class(redis_url: str) -> None:
    async with multiplexer(redis_url) as client:
        with pytest.raises(rx.NoScriptError):
            await client.execute_command("EVALSHA", "0" * 40, 0)


# ----------------------------------------------------------------------------- errors


@pytest.mark.anyio
async def test_error_reply_fails_only_its_own_command(redis_url: str, redis_prefix: str) -> None:
    hkey, skey = f"{redis_prefix}:h", f"{redis_prefix}:s"
    async with multiplexer(redis_url) as client:
        await client.execute_command("HSET", hkey, "f", "v")
        await client.execute_command("SET", skey, "fine")
        conn = client._conn
        writes = count_writes(client)
        results: tuple[Any, ...] = await asyncio.gather(
            client.execute_command("PING"),  # an idle connection writes it at once...
            client.execute_command("INCR", hkey),  # ...and these three wait for one write
            client.execute_command("GET", skey),
            client.execute_command("HGET", hkey, "f"),
            return_exceptions=True,
        )
        assert len(writes) == 2 and writes[1].count(b"\r\n*") == 2  # the three in one batch
        pong, bad, good, after = results
        assert pong == "PONG"
        assert isinstance(bad, rx.ResponseError) and "WRONGTYPE" in str(bad)
        assert (good, after) == ("fine", "v")
        assert await client.execute_command("GET", skey) == "fine"
        assert client._conn is conn  # the connection stayed usable


@pytest.mark.anyio
async def test_refused_port_raises_connection_error() -> None:
    async with multiplexer(f"redis://127.0.0.1:{free_port()}/0", timeout=2.0) as client:
        with pytest.raises(rx.ConnectionError):
            await client.execute_command("PING")
        with pytest.raises(rx.ConnectionError):  # and again: each command tries anew
            await client.execute_command("PING")


async def set_get_pairs(client: RedisMultiplexer, prefix: str, n: int, tag: str) -> None:
    """Concurrent SET k_i v_i / GET k_i pairs: each GET must get its own value back."""
    coros = []
    for i in range(n):
        coros += [
            client.execute_command("SET", f"{prefix}:k{i}", f"{tag}-{i}"),
            client.execute_command("GET", f"{prefix}:k{i}"),
        ]
    results = await asyncio.gather(*coros)
    assert results[0::2] == ["OK"] * n
    assert results[1::2] == [f"{tag}-{i}" for i in range(n)]


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["delay", "drop"])
async def test_timeout_closes_the_connection_and_recovery_stays_aligned(
    redis_url: str, redis_prefix: str, mode: str
) -> None:
    async with FaultProxy(redis_url) as proxy, multiplexer(proxy.url(), timeout=0.3) as client:
        await set_get_pairs(client, redis_prefix, 5, "before")
        proxy.mode, proxy.delay = mode, 1.0
        first = asyncio.ensure_future(client.execute_command("GET", f"{redis_prefix}:k0"))
        await asyncio.sleep(0.05)
        later = asyncio.ensure_future(client.execute_command("GET", f"{redis_prefix}:k1"))
        with pytest.raises(rx.TimeoutError):
            await first
        with pytest.raises((rx.TimeoutError, rx.ConnectionError)):
            await later  # pending behind the timed-out one: failed, never given its reply
        proxy.mode = "pass"
        await set_get_pairs(client, redis_prefix, 20, "after")
        await asyncio.sleep(1.0)  # the late replies (delay mode) would arrive by now
        await set_get_pairs(client, redis_prefix, 20, "later")


@pytest.mark.anyio
async def test_a_retry_on_a_spare_does_not_wait_for_the_stalled_connection(
    redis_url: str, redis_prefix: str
) -> None:
    async with FaultProxy(redis_url) as proxy, multiplexer(proxy.url(), timeout=5.0) as client:
        assert await client.execute_command("PING") == "PONG"  # the shared connection
        proxy.stall_open_links()
        stalled = asyncio.ensure_future(client.execute_command("GET", f"{redis_prefix}:k"))
        await asyncio.sleep(0.05)
        assert await client.execute_alone("SET", f"{redis_prefix}:k", "v") == "OK"
        assert await client.execute_alone("GET", f"{redis_prefix}:k") == "v"
        assert not stalled.done()  # still waiting for its reply, which never comes
        stalled.cancel()


@pytest.mark.anyio
async def test_spares_are_few_and_kept_for_the_next_fault(redis_url: str) -> None:
    async with FaultProxy(redis_url) as proxy, multiplexer(proxy.url(), timeout=5.0) as client:
        retries = 3 * multiplex.SPARE_CONNECTIONS
        replies = await asyncio.gather(*(client.execute_alone("PING") for _ in range(retries)))
        assert replies == ["PONG"] * retries
        assert proxy.accepted <= multiplex.SPARE_CONNECTIONS
        opened = proxy.accepted
        await asyncio.gather(*(client.execute_alone("PING") for _ in range(retries)))
        assert proxy.accepted == opened  # kept, not opened again


@pytest.mark.anyio
async def test_a_retry_waits_for_a_spare_a_bounded_time(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(multiplex, "SPARE_CONNECTIONS", 1)
    monkeypatch.setattr(multiplex, "SPARE_WAIT", 0.5)  # of the timeout: before the first ends
    async with FaultProxy(redis_url) as proxy, multiplexer(proxy.url(), timeout=0.4) as client:
        proxy.mode = "drop"
        first, second = await asyncio.gather(
            client.execute_alone("PING"), client.execute_alone("PING"), return_exceptions=True
        )
        assert isinstance(first, rx.TimeoutError) and "no reply" in str(first)
        assert isinstance(second, rx.TimeoutError) and "no spare" in str(second)
        proxy.mode = "pass"
        assert await client.execute_alone("PING") == "PONG"  # the spare reconnects


@pytest.mark.anyio
async def test_connection_cut_fails_pending_then_recovers(
    redis_url: str, redis_prefix: str
) -> None:
    async with FaultProxy(redis_url) as proxy, multiplexer(proxy.url(), timeout=5.0) as client:
        await set_get_pairs(client, redis_prefix, 3, "a")
        proxy.mode, proxy.delay = "delay", 10.0
        pending = [asyncio.ensure_future(client.execute_command("PING")) for _ in range(5)]
        await asyncio.sleep(0.05)
        proxy.cut()
        for task in pending:
            with pytest.raises(rx.ConnectionError):
                await task
        proxy.mode = "pass"
        await set_get_pairs(client, redis_prefix, 10, "b")
        proxy.cut()  # cut while idle: the next command reconnects transparently
        await asyncio.sleep(0.05)
        await set_get_pairs(client, redis_prefix, 10, "c")


@pytest.mark.anyio
async def test_handshake_without_reply_times_out(redis_url: str) -> None:
    async with FaultProxy(redis_url) as proxy:
        proxy.mode = "drop"
        async with multiplexer(proxy.url(db=1), timeout=0.3) as client:
            with pytest.raises(rx.TimeoutError):
                await client.execute_command("PING")
            proxy.mode = "pass"
            assert await client.execute_command("PING") == "PONG"


@pytest.mark.anyio
async def test_cancelled_caller_does_not_misalign_the_others(
    redis_url: str, redis_prefix: str
) -> None:
    async with FaultProxy(redis_url) as proxy, multiplexer(proxy.url(), timeout=5.0) as client:
        await set_get_pairs(client, redis_prefix, 30, "v")
        proxy.mode, proxy.delay = "delay", 0.2  # keeps the replies pending while we cancel
        tasks = [
            asyncio.ensure_future(client.execute_command("GET", f"{redis_prefix}:k{i}"))
            for i in range(30)
        ]
        await asyncio.sleep(0.05)
        conn = client._conn
        assert conn is not None and len(conn.pending) == 30  # all written, none answered
        for task in tasks[::3]:
            task.cancel()
        proxy.mode = "pass"
        for i, task in enumerate(tasks):
            if i % 3 == 0:
                with pytest.raises(asyncio.CancelledError):
                    await task
            else:
                assert await task == f"v-{i}"
        await set_get_pairs(client, redis_prefix, 30, "w")
        assert client._conn is conn


@pytest.mark.anyio
async def test_aclose_fails_pending_and_the_client_can_be_reused(
    redis_url: str, redis_prefix: str
) -> None:
    async with FaultProxy(redis_url) as proxy, multiplexer(proxy.url(), timeout=5.0) as client:
        assert await client.execute_command("PING") == "PONG"
        proxy.mode, proxy.delay = "delay", 10.0
        pending = asyncio.ensure_future(client.execute_command("PING"))
        await asyncio.sleep(0.05)
        await client.aclose()
        with pytest.raises(rx.ConnectionError):
            await pending
        proxy.mode = "pass"
        await set_get_pairs(client, redis_prefix, 5, "reused")


@pytest.mark.anyio
async def test_paused_writing_holds_new_commands_until_resumed(redis_url: str) -> None:
    async with multiplexer(redis_url) as client:
        assert await client.execute_command("PING") == "PONG"
        conn = client._conn
        assert conn is not None
        conn.pause_writing()  # as the transport does over its high-water mark
        held = asyncio.ensure_future(client.execute_command("ECHO", "x"))
        await asyncio.sleep(0.05)
        assert not held.done() and not conn.pending
        conn.resume_writing()
        assert await held == "x"


# ------------------------------------------------------------- auth, db, unix, TLS


@pytest.fixture(scope="module")
def auth_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A private redis-server with ``--requirepass pw`` and a unix socket: (port, socket)."""
    binary = shutil.which("redis-server")
    if binary is None:
        service_missing("redis-server not found (needed for the --requirepass tests)")
    workdir = tmp_path_factory.mktemp("redis-auth")
    sock = workdir / "redis.sock"
    port = free_port()
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
           "--save", "", "--appendonly", "no", "--requirepass", "pw",
           "--unixsocket", str(sock), "--unixsocketperm", "700"]  # fmt: skip
    log = open(workdir / "redis.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    try:
        deadline = time.monotonic() + 10
        while redis_error(f"redis://:pw@127.0.0.1:{port}/0", timeout=0.5) is not None:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server --requirepass did not start: {cmd}", pytrace=False)
            time.sleep(0.05)
        yield port, sock
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.anyio
async def test_password_and_db_from_the_url(
    auth_redis: tuple[int, Path], redis_prefix: str
) -> None:
    port, _ = auth_redis
    key = f"{redis_prefix}:db3"
    for auth in (":pw@", "default:pw@"):
        async with multiplexer(f"redis://{auth}127.0.0.1:{port}/3") as client:
            assert "db=3" in await client.execute_command("CLIENT", "INFO")
            assert await client.execute_command("SET", key, auth) == "OK"
        with redis.Redis(port=port, password="pw", db=3, decode_responses=True) as sync:
            assert sync.get(key) == auth
            assert sync.delete(key) == 1


@pytest.mark.anyio
async def test_wrong_or_missing_password_fails(auth_redis: tuple[int, Path]) -> None:
    port, _ = auth_redis
    async with multiplexer(f"redis://:nope@127.0.0.1:{port}/0") as client:
        with pytest.raises(rx.AuthenticationError):
            await client.execute_command("PING")
    async with multiplexer(f"redis://127.0.0.1:{port}/0") as client:
        with pytest.raises(rx.AuthenticationError):  # NOAUTH: an error reply, not a hang
            await client.execute_command("PING")


@pytest.mark.anyio
async def test_unix_socket_url(auth_redis: tuple[int, Path]) -> None:
    _, sock = auth_redis
    async with multiplexer(f"unix://:pw@{sock}?db=2") as client:
        assert "db=2" in await client.execute_command("CLIENT", "INFO")


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A private redis-server on TLS (self-signed, for ``localhost``): its port and its
    certificate; skipped where TLS is unavailable."""
    binary, openssl = shutil.which("redis-server"), shutil.which("openssl")
    if binary is None or openssl is None:
        pytest.skip("redis-server and openssl are needed for the TLS test")
    workdir = tmp_path_factory.mktemp("redis-tls")
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    made = subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        capture_output=True, check=False,
    )  # fmt: skip
    if made.returncode != 0:
        pytest.skip("openssl could not make a test certificate")
    port = free_port()
    cmd = [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
           "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file",
           str(cert), "--tls-auth-clients", "no", "--save", "", "--appendonly", "no",
           "--dir", str(workdir)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=none"
        deadline = time.monotonic() + 10
        while redis_error(url, timeout=0.5) is not None:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip("this redis-server does not run TLS")
            time.sleep(0.05)
        yield port, cert
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.anyio
async def test_rediss_url(tls_redis: tuple[int, Path]) -> None:
    port, cert = tls_redis
    async with multiplexer(f"rediss://127.0.0.1:{port}/4?ssl_cert_reqs=none") as client:
        assert "db=4" in await client.execute_command("CLIENT", "INFO")
    async with multiplexer(f"rediss://127.0.0.1:{port}/0") as client:
        with pytest.raises(rx.ConnectionError):  # a self-signed certificate is refused
            await client.execute_command("PING")
    # redis-py's query options: the certificate trusted, the name checked or not.
    for url in (
        f"rediss://localhost:{port}/5?ssl_ca_certs={cert}",
        f"rediss://127.0.0.1:{port}/5?ssl_ca_certs={cert}&ssl_check_hostname=false",
    ):
        async with multiplexer(url) as client:
            assert "db=5" in await client.execute_command("CLIENT", "INFO")


def test_lua_script_sha_is_sha1_of_the_source() -> None:
    assert LuaScript("return 1").sha == "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
