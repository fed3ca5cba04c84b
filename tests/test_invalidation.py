"""Push invalidation over Redis pub/sub: delivery, resync order, fallback on a bad channel.

Every wait below is bounded and waits for an event; nothing asserts on elapsed time. A small
TCP proxy stands between listener and Redis to cut, refuse or blackhole the connection."""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from keystile._redis.invalidation import InvalidationListener, invalidation_channel

from . import polling
from .faults import Proxy
from .services import free_port, redis_error

HEARTBEAT, TIMEOUT = 0.1, 0.2
WAIT = 5.0  # bound for every wait; far above what any step needs
THREAD_NAME = "keystile-invalidation"


def eventually(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    return polling.eventually(condition, timeout)


def came_back_after_resync(events: list[Any]) -> bool:
    """After the first fall, healthy became True again only once a resync had run."""
    fall = events.index(("healthy", False))
    back = events.index(("healthy", True), fall)
    return "resync" in events[fall:back]


def db15(url: str) -> str:
    return urlsplit(url)._replace(path="/15").geturl()


def connect_to(url: str) -> Callable[..., tuple[redis.Redis, bool]]:
    """The listener's ``connect``: a plain client of one server (not sharded)."""

    def connect(channel: str, timeout: float, **extra: Any) -> tuple[redis.Redis, bool]:
        options = {"socket_timeout": timeout, "socket_connect_timeout": timeout, **extra}
        return redis.Redis.from_url(url, **options), False

    return connect


class Listener(InvalidationListener):
    """Records kids, resyncs and every change of ``healthy`` in one ordered list."""

    def __init__(self, url: str, channel: str, **kwargs: Any) -> None:
        self.events: list[Any] = []  # ("kid", kid) | "resync" | ("healthy", bool)
        self._changed = threading.Condition()
        self._healthy = False
        kwargs.setdefault("on_invalidate", lambda kid: self.record(("kid", kid)))
        kwargs.setdefault("on_resync", lambda: self.record("resync"))
        kwargs.setdefault("timeout", TIMEOUT)
        kwargs.setdefault("heartbeat", HEARTBEAT)
        super().__init__(connect_to(db15(url)), channel, **kwargs)

    @property  # type: ignore[override]
    def healthy(self) -> bool:
        return self._healthy

    @healthy.setter
    def healthy(self, value: bool) -> None:
        if value != self._healthy:
            self.record(("healthy", value))
        self._healthy = value

    def record(self, event: Any) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def wait_for(self, event: Any, after: int = 0) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: event in self.events[after:], WAIT)


@pytest.fixture
def channel(redis_prefix: str) -> str:
    return invalidation_channel(redis_prefix)


@pytest.fixture
def listen() -> Iterator[Callable[..., Listener]]:
    """``listen(url, channel, **kwargs)``: a started Listener, stopped at teardown."""
    made: list[Listener] = []

    def make(url: str, channel: str, **kwargs: Any) -> Listener:
        listener = Listener(url, channel, **kwargs)
        made.append(listener)
        listener.start()
        return listener

    yield make
    for listener in made:
        listener.stop()


@pytest.fixture
def proxy(redis_url: str) -> Iterator[Proxy]:
    p = Proxy(redis_url)
    yield p
    p.close()


def test_channel_name_is_under_the_prefix() -> None:
    assert invalidation_channel("kst-abc") == "kst-abc:invalidate"


def test_publish_reaches_every_listener(listen, redis_url, redis_client, channel) -> None:
    a, b = listen(redis_url, channel), listen(redis_url, channel)
    assert a.wait_healthy(WAIT) and b.wait_healthy(WAIT)
    redis_client.publish(channel, "kid-1")  # what the gateway sends for a key change
    assert a.wait_for(("kid", "kid-1")) and b.wait_for(("kid", "kid-1"))


def test_resync_once_after_subscribe_then_healthy(listen, redis_url, redis_client, channel):
    seen: list[tuple[int, bool]] = []

    def on_resync() -> None:  # the subscription must already be confirmed
        seen.append((redis_client.pubsub_numsub(channel)[0][1], listener.healthy))
        listener.record("resync")

    listener = listen(redis_url, channel, on_resync=on_resync)
    assert listener.wait_healthy(WAIT)
    assert seen == [(1, False)]
    assert listener.events[:2] == ["resync", ("healthy", True)]
    first = listener.synced_at  # heartbeats keep it fresh without further resyncs
    assert eventually(lambda: listener.synced_at > first + 3 * HEARTBEAT)
    assert listener.events.count("resync") == 1
    assert eventually(lambda: listener.is_fresh(time.monotonic()))
    assert not listener.is_fresh(time.monotonic() + HEARTBEAT + TIMEOUT + 1)


def test_dropped_channel_falls_back_then_resyncs(listen, proxy, redis_client, channel):
    listener = listen(proxy.url, channel)
    assert listener.wait_healthy(WAIT)
    mark = len(listener.events)
    proxy.mode = "refuse"
    proxy.cut()
    assert eventually(lambda: not listener.healthy)
    redis_client.publish(channel, "while-down")  # nobody is subscribed through the proxy
    proxy.mode = "pass"
    assert listener.wait_for(("healthy", True), after=mark)
    assert came_back_after_resync(listener.events[mark:])
    redis_client.publish(channel, "after")
    assert listener.wait_for(("kid", "after"))
    assert ("kid", "while-down") not in listener.events


def test_missing_pong_falls_back_until_restored(listen, proxy, redis_client, channel):
    listener = listen(proxy.url, channel)
    assert listener.wait_healthy(WAIT)
    mark = len(listener.events)
    proxy.mode = "blackhole"
    assert eventually(lambda: not listener.healthy)
    assert not listener.is_fresh(time.monotonic())
    proxy.mode = "pass"
    assert listener.wait_for(("healthy", True), after=mark)
    assert came_back_after_resync(listener.events[mark:])  # a new connection
    redis_client.publish(channel, "after")
    assert listener.wait_for(("kid", "after"))


def test_stalled_listener_thread_turns_unhealthy_itself(listen, redis_url, redis_client, channel):
    offset = [0.0]
    entered, release = threading.Event(), threading.Event()

    def on_invalidate(kid: str) -> None:
        entered.set()
        release.wait(WAIT)  # the thread is stuck here, as if starved or paused

    listener = listen(
        redis_url, channel, on_invalidate=on_invalidate, clock=lambda: time.monotonic() + offset[0]
    )
    assert listener.wait_healthy(WAIT)
    mark = len(listener.events)
    redis_client.publish(channel, "stall")
    assert entered.wait(WAIT)
    time.sleep(0.05)  # lets the pong of a ping already in flight reach the socket
    offset[0] += 10.0  # the stall "lasted" far beyond heartbeat + timeout
    release.set()
    assert listener.wait_for(("healthy", False), after=mark)
    fall = listener.events.index(("healthy", False), mark)
    assert listener.wait_for(("healthy", True), after=fall)
    # Same connection, nothing lost: a fresh pong is proof enough, no cache flush.
    assert "resync" not in listener.events[mark:]


def test_stop_joins_and_is_unhealthy(redis_url, channel) -> None:
    def ours() -> int:
        return sum(t.name == THREAD_NAME for t in threading.enumerate())

    before = ours()
    listener = Listener(redis_url, channel)
    listener.start()
    listener.start()  # idempotent
    assert ours() == before + 1
    assert listener.wait_healthy(WAIT)
    listener.stop()
    assert not listener.healthy and not listener.wait_healthy(0)
    assert ours() == before
    listener.start()  # restartable
    assert listener.wait_healthy(WAIT)
    listener.stop()
    assert not listener.healthy and ours() == before


def test_callback_errors_are_logged_and_survived(listen, redis_url, redis_client, channel, caplog):
    resyncs = []

    def on_invalidate(kid: str) -> None:
        if kid == "boom-kid":
            raise RuntimeError(kid)
        listener.record(("kid", kid))

    def on_resync() -> None:
        resyncs.append(1)
        if len(resyncs) == 1:
            raise RuntimeError("first resync fails")  # never healthy without a resync

    caplog.set_level(logging.DEBUG, logger="keystile")
    listener = listen(redis_url, channel, on_invalidate=on_invalidate, on_resync=on_resync)
    assert listener.wait_healthy(WAIT)
    assert len(resyncs) == 2
    redis_client.publish(channel, "boom-kid")
    redis_client.publish(channel, "next-kid")
    assert listener.wait_for(("kid", "next-kid"))
    assert listener.healthy
    records = [r for r in caplog.records if r.name == "keystile"]
    assert any("callback failed (RuntimeError)" in r.getMessage() for r in records)
    assert "boom-kid" not in caplog.text


@pytest.fixture(scope="module")
def password_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server with ``requirepass``: its URL without the password."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not on PATH")
    port, workdir = free_port(), tmp_path_factory.mktemp("redis-auth")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--requirepass", "s3cret",
         "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/15"
    try:
        ok = eventually(lambda: redis_error(url.replace("//", "//:s3cret@"), 0.2) is None)
        assert ok, "password redis-server did not start"
        yield url
    finally:
        proc.terminate()
        proc.wait(WAIT)


def test_password_url_is_passed_through(listen, password_redis, redis_prefix, caplog) -> None:
    channel = invalidation_channel(redis_prefix)
    caplog.set_level(logging.DEBUG, logger="keystile")
    wrong = listen(password_redis.replace("//", "//:wrong@"), channel)
    listener = listen(password_redis.replace("//", "//:s3cret@"), channel)
    assert listener.wait_healthy(WAIT)
    with redis.Redis.from_url(password_redis.replace("//", "//:s3cret@")) as client:
        client.publish(channel, "kid-auth")
    assert listener.wait_for(("kid", "kid-auth"))
    assert eventually(lambda: "channel lost (AuthenticationError)" in caplog.text)
    assert not wrong.healthy and "resync" not in wrong.events


def test_the_engines_own_connection_stays_healthy_across_heartbeats(
    redis_url: str, channel: str
) -> None:
    """The listener on the client keystile builds for it (``pubsub_client``): its pongs are
    read as pongs, so heartbeats keep it healthy with no resync after the first."""
    from functools import partial

    from keystile._core.settings import load_settings
    from keystile._redis.clients import pubsub_client

    settings = load_settings({"redis_url": db15(redis_url), "secret": "s" * 32})
    resyncs: list[float] = []
    listener = InvalidationListener(
        partial(pubsub_client, settings),
        channel,
        on_invalidate=lambda kid: None,
        on_resync=lambda: resyncs.append(time.monotonic()),
        timeout=TIMEOUT,
        heartbeat=HEARTBEAT,
    )
    listener.start()
    try:
        assert listener.wait_healthy(WAIT)
        first = listener.synced_at
        assert eventually(lambda: listener.synced_at > first + 5 * HEARTBEAT)
        assert len(resyncs) == 1 and listener.healthy
    finally:
        listener.stop()
