"""Failed-login limits: per client, per key id, and the known secret that passes a key's limit.

A client that fails ``login_max_failures`` times in ``login_failure_window`` seconds is refused
(429) before any argon2 run. So is every client of a key id that failed
``login_max_failures_per_key`` times from anywhere, which stops a guessing campaign spread over
many addresses; but a limit on a key alone would let anyone lock its owner out, so while it
holds, a login whose credential digest matches the key's last successful login still goes
through. That digest is the same keyed HMAC the verification cache uses, kept for
``KNOWN_SECRET_TTL``; a rolled key's new secret is known after its first login outside an attack.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from keystile._core.errors import BackendError

if TYPE_CHECKING:
    from keystile._runtime.engine import Keystile

KNOWN_SECRET_TTL = 30 * 24 * 3600
_LOCAL_LIMIT = 100_000  # entries kept without Redis; the oldest go first


@contextmanager
def _redis_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        raise BackendError(f"login limits unavailable ({type(exc).__name__})") from exc


class FailureCounter:
    """Failed logins per subject in a fixed window: in Redis when there is one, else here."""

    def __init__(self, engine: Keystile) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._local: dict[str, tuple[float, int]] = {}

    def _key(self, subject: str) -> str:
        digest = hashlib.sha256(subject.encode("utf-8", "replace")).hexdigest()[:32]
        return f"{self._engine.settings.redis_prefix}:login:{digest}"

    def count(self, subject: str) -> int:
        engine = self._engine
        if engine.has_redis:
            with _redis_errors():
                return int(engine.redis.client.get(self._key(subject)) or 0)
        with self._lock:
            start, failures = self._local.get(subject, (0.0, 0))
            window = engine.settings.login_failure_window
            return failures if time.monotonic() - start < window else 0

    def add(self, *subjects: str) -> None:
        engine = self._engine
        window = engine.settings.login_failure_window
        if engine.has_redis:
            with _redis_errors():
                pipe = engine.redis.client.pipeline()
                for subject in subjects:
                    pipe.incr(self._key(subject))
                    pipe.expire(self._key(subject), window, nx=True)
                pipe.execute()
            return
        with self._lock:
            now = time.monotonic()
            for subject in subjects:
                start, failures = self._local.get(subject, (now, 0))
                if now - start >= window:
                    start, failures = now, 0
                self._local[subject] = (start, failures + 1)
            if len(self._local) > _LOCAL_LIMIT:
                cutoff = now - window
                self._local = {k: v for k, v in self._local.items() if v[0] > cutoff}


class KnownSecrets:
    """Per key id, the credential digest of its last successful login."""

    def __init__(self, engine: Keystile) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._local: dict[str, tuple[float, str]] = {}

    def _key(self, kid: str) -> str:
        return f"{self._engine.settings.redis_prefix}:login-known:{kid}"

    def remember(self, kid: str, digest: str) -> None:
        engine = self._engine
        if engine.has_redis:
            with _redis_errors():
                engine.redis.client.set(self._key(kid), digest, ex=KNOWN_SECRET_TTL)
            return
        with self._lock:
            self._local.pop(kid, None)  # re-insert: dict order is the age order
            self._local[kid] = (time.monotonic() + KNOWN_SECRET_TTL, digest)
            while len(self._local) > _LOCAL_LIMIT:
                del self._local[next(iter(self._local))]

    def matches(self, kid: str, digest: str) -> bool:
        engine = self._engine
        if engine.has_redis:
            with _redis_errors():
                known = engine.redis.client.get(self._key(kid))
            known_digest = known.decode() if isinstance(known, bytes) else known
        else:
            with self._lock:
                expires, known_digest = self._local.get(kid, (0.0, None))
                if expires <= time.monotonic():
                    known_digest = None
        return known_digest is not None and hmac.compare_digest(known_digest, digest)
