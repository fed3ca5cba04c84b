"""Push invalidation for the "fast" consistency mode: key changes over Redis pub/sub.

In fast mode a warm key is served from the local cache without asking Redis. That is safe
only while this process is known to hear every change, so the engine publishes the key id
after each state change and every process drops that key's entries on receipt; while the
channel cannot be trusted, ``healthy`` is False and the engine checks stamps per request.

Why ``healthy`` can be trusted:

* Redis writes a connection's pub/sub messages and command replies into one ordered stream.
  The pong to a PING sent at time *t* arrives after every message published before *t*, so
  an answered ping proves that everything published up to its send time has been applied;
  ``synced_at`` is that send time. Healthy means it is less than ``heartbeat + timeout``
  old: a blackholed link, a slow server and a stalled listener thread all age it alike.
* Messages are lost only with the connection. A new connection is trusted only after its
  SUBSCRIBE is confirmed and ``on_resync`` (the engine clears its cache) has returned.
* redis-py's own retries (and its RESP3 maintenance handling) would reconnect and resubscribe
  silently, skipping that resync; both are off, so every error takes the one path here.

Redis Cluster (7 or later): the channel is sharded (SPUBLISH / SSUBSCRIBE), so a change goes
to the one primary that owns the channel's slot, not to every node; the listener talks to that
primary. The same ordering holds on that connection. A failover or a slot move drops the
connection (Redis unsubscribes it), and the reconnect resyncs like any other.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.client import PubSub
from redis.maint_notifications import MaintNotificationsConfig
from redis.retry import Retry

logger = logging.getLogger("keystile")

_POLL = 0.05  # longest single wait: bounds how late stop() and deadlines are noticed
_MIN_READ = 0.01  # a zero read timeout fails on a half-arrived reply; never poll with 0
_BACKOFF_MIN, _BACKOFF_MAX = 0.05, 2.0


def invalidation_channel(prefix: str) -> str:
    return f"{prefix}:invalidate"


class _Lost(Exception):
    """The connection can no longer vouch for the stream: reconnect and resync."""


def _text(data: Any) -> str:
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)


class InvalidationListener:
    """A daemon thread subscribed to ``channel``; works for WSGI and ASGI processes alike.

    The hot path reads only ``healthy``, a plain attribute written by this thread alone. A
    thread that is not running cannot clear it, so it clears it itself as soon as it runs
    again and sees ``synced_at`` too old; callers holding a reading of ``clock`` can close
    that window with :meth:`is_fresh`. Start it after a fork, in the process that serves."""

    def __init__(
        self,
        connect: Callable[..., tuple[redis.Redis, bool]],
        channel: str,
        *,
        on_invalidate: Callable[[str], None],
        on_resync: Callable[[], None],
        timeout: float,
        heartbeat: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connect, self._channel = connect, channel
        self._on_invalidate, self._on_resync = on_invalidate, on_resync
        self._timeout, self._heartbeat, self._clock = timeout, heartbeat, clock
        self.healthy = False
        self.synced_at = float("-inf")  # clock() at the send of the last answered probe
        self._became_healthy = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # start() / stop() only, never the hot path
        self._thread: threading.Thread | None = None
        self._delay = _BACKOFF_MIN  # reconnect backoff, reset by each resync

    def start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="keystile-invalidation", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        with self._lock:
            self._stop.set()
            if self._thread is not None:
                self._thread.join(timeout)
            self._set_healthy(False)

    def wait_healthy(self, timeout: float) -> bool:
        return self._became_healthy.wait(timeout) and self.healthy

    def is_fresh(self, now: float) -> bool:
        """``healthy``, and the stream was proven complete at most heartbeat+timeout ago."""
        return self.healthy and now - self.synced_at <= self._heartbeat + self._timeout

    def _set_healthy(self, flag: bool) -> None:
        if flag and self._stop.is_set():
            return  # stop() has the last word
        if flag != self.healthy:
            self.healthy = flag
            (self._became_healthy.set if flag else self._became_healthy.clear)()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._session()
            except Exception as exc:  # redis, OSError, _Lost, a failed resync: all reconnect
                # Warn once per outage (the delay is reset by each resync), not per retry.
                level = logging.WARNING if self._delay == _BACKOFF_MIN else logging.DEBUG
                logger.log(level, "invalidation channel lost (%s)", type(exc).__name__)
            self._set_healthy(False)
            # Jitter spreads the reconnects of many processes after a Redis restart.
            self._stop.wait(self._delay * random.uniform(0.5, 1.0))
            self._delay = min(self._delay * 2, _BACKOFF_MAX)

    def _session(self) -> None:
        client, sharded = self._connect(
            self._channel,
            self._timeout,
            retry=Retry(NoBackoff(), 0, supported_errors=()),
            maint_notifications_config=MaintNotificationsConfig(enabled=False),  # reconnects too
        )
        pubsub: PubSub = client.pubsub()  # type: ignore[no-untyped-call]
        try:
            self._listen(pubsub, sharded)
        finally:
            self._set_healthy(False)
            pubsub.close()
            client.close()

    def _listen(self, pubsub: PubSub, sharded: bool) -> None:
        resynced, token = False, 0
        message_kind, confirmed = (
            ("smessage", "ssubscribe") if sharded else ("message", "subscribe")
        )
        (pubsub.ssubscribe if sharded else pubsub.subscribe)(self._channel)
        probe: float | None = self._clock()  # SUBSCRIBE is the first probe
        while not self._stop.is_set():
            # Judged on a fresh reading at the top of every turn, so a turn that was stalled
            # (in a callback, or starved of the GIL) turns healthy off before anything else.
            now = self._clock()
            self._set_healthy(resynced and now - self.synced_at <= self._heartbeat + self._timeout)
            if resynced and probe is None and now >= self.synced_at + self._heartbeat:
                token += 1
                pubsub.ping(f"keystile-{token}")
                probe = now
            due = probe + self._timeout if probe is not None else self.synced_at + self._heartbeat
            if resynced:
                due = min(due, self.synced_at + self._heartbeat + self._timeout)  # staleness
            message = pubsub.get_message(timeout=max(_MIN_READ, min(_POLL, due - now)))
            kind = message["type"] if message else None
            if kind == message_kind:
                self._invalidate(_text(message["data"]))
            elif kind == confirmed and not resynced and probe is not None:
                try:
                    self._on_resync()
                except Exception as exc:
                    raise _Lost("resync failed") from exc  # never healthy without it
                resynced, self.synced_at, probe = True, probe, None
                self._delay = _BACKOFF_MIN
            elif kind == "pong" and probe is not None:
                if _text(message["data"]) == f"keystile-{token}":
                    self.synced_at, probe = probe, None
            elif kind == "sunsubscribe":
                raise _Lost("the channel's slot moved")  # failover or resharding
            elif message is None and probe is not None and self._clock() - probe > self._timeout:
                raise _Lost("no reply in time")  # judged only once nothing is left to read

    def _invalidate(self, kid: str) -> None:
        try:
            self._on_invalidate(kid)
        except Exception as exc:
            logger.error("invalidation callback failed (%s)", type(exc).__name__)
