"""The set of every existing key id in Redis: a well-formed token with an id outside it is
refused without a store read. Keeping it: new ids join (retried in the background while Redis
is down), deleted ids leave, and one engine of all sharing the Redis seeds it from the store."""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable

from keystile._core.errors import BackendError
from keystile._core.rediskeys import KIDS_READY, KIDS_RESEED_SECONDS
from keystile._core.store import KeyStore
from keystile._redis.gateway import REDIS_ERRORS, RedisGateway
from keystile._redis.scripts import SyncRedis

log = logging.getLogger("keystile")

#: How often an engine may start seeding the set, and how long its lock may live.
SEED_INTERVAL = 5.0
SEED_LOCK_TTL = 120


class KeyIdSet:
    def __init__(self, gateway: RedisGateway, store: KeyStore, monotonic: Callable[[], float]):
        self._gateway = gateway
        self._store = store
        self._monotonic = monotonic
        self._unannounced: set[str] = set()
        self._lock = threading.Lock()
        self._announcer: threading.Thread | None = None
        self._seed_after = float("-inf")
        self.seeder: threading.Thread | None = None

    def announce(self, kid: str) -> None:
        """A new key's id joins, whether or not the set is seeded yet (seeding only adds, so
        the id stays in). Should Redis be down, the key still works wherever Redis is down
        (lookups fall back to the store), and a thread retries until Redis answers; only in
        the moments between Redis coming back and that retry can a seeded set refuse it."""
        try:
            self._gateway.add_kids([kid])
        except BackendError as exc:
            log.warning("keystile: could not add key id to Redis, will retry (%s)", exc)
            with self._lock:
                self._unannounced.add(kid)
                if self._announcer is None or not self._announcer.is_alive():
                    self._announcer = threading.Thread(
                        target=self._announce_later, name="keystile-announce", daemon=True
                    )
                    self._announcer.start()

    def _announce_later(self, delay: float = 0.5) -> None:
        while True:
            threading.Event().wait(delay)  # a background thread: nothing else waits on it
            with self._lock:
                kids = sorted(self._unannounced)
                if not kids:
                    self._announcer = None
                    return
            try:
                self._gateway.add_kids(kids)
            except BackendError:
                delay = min(delay * 2, 5.0)
                continue
            with self._lock:
                self._unannounced.difference_update(kids)

    def forget(self, kid: str) -> None:
        """A deleted key's id leaves (if this fails, a stale member only costs the store
        lookup an unknown id cost before the set existed)."""
        with self._lock:
            self._unannounced.discard(kid)
        try:
            self._gateway.remove_kid(kid)
        except BackendError as exc:
            log.warning("keystile: could not remove key id from Redis (%s)", exc)

    def seed_soon(self) -> None:
        """The set is not seeded: a background thread seeds it from the store (one thread per
        engine at a time, started at most every few seconds; one engine of all that share
        the Redis does the work, under a lock key)."""
        now = self._monotonic()
        # A store that cannot list its key ids leaves the set unseeded.
        if now < self._seed_after or getattr(self._store, "all_kids", None) is None:
            return
        self._seed_after = now + SEED_INTERVAL
        self.seeder = threading.Thread(target=self._seed, name="keystile-kids", daemon=True)
        self.seeder.start()

    def wait_for_seeder(self, timeout: float) -> None:
        """A closing engine lets a seeding under way finish its store read first (its store
        closes next), waiting at most ``timeout``."""
        seeder = self.seeder
        if seeder is not None and seeder.is_alive():
            seeder.join(timeout)

    def _seed(self) -> None:
        try:
            # Its own connection: requests' stay theirs. (A cluster client maps the cluster
            # as it is made: that can fail too.)
            own = SyncRedis(self._gateway.settings)
        except REDIS_ERRORS as exc:
            log.warning("keystile: could not seed the key-id set (%s)", type(exc).__name__)
            return
        keys, client = self._gateway.keys, own.client
        try:
            if client.sismember(keys.kids(), KIDS_READY):
                return
            token = secrets.token_hex(16)
            if not client.set(keys.kids_lock(), token, nx=True, ex=SEED_LOCK_TTL):
                return  # another engine is seeding
            seeded = "0"
            try:
                # Only adds: an id created meanwhile (added by announce) stays in.
                kids = list(self._store.all_kids())
                for start in range(0, len(kids), 1000):
                    client.sadd(keys.kids(), *kids[start : start + 1000])
                seeded = "1"
            finally:
                own.scripts["seed_done"](
                    keys=[keys.kids(), keys.kids_lock()],
                    args=[token, KIDS_READY, seeded, KIDS_RESEED_SECONDS],
                )
        except (*REDIS_ERRORS, BackendError) as exc:  # unseeded: lookups go to the store
            log.warning("keystile: could not seed the key-id set (%s)", type(exc).__name__)
        finally:
            own.close()
