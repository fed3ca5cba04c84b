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

import hmac
import threading

from keystile._backends.backends import Backends

KNOWN_SECRET_TTL = 30 * 24 * 3600
_LOCAL_LIMIT = 100_000  # entries kept without Redis; the oldest go first


class FailureCounter:
    """Failed logins per subject in a fixed window: in Redis when there is one, else here.
    A Redis failure is :class:`~keystile.BackendError` (the gateway's policy)."""

    def __init__(self, backends: Backends) -> None:
        self._redis = backends.redis
        self._window = backends.settings.login_failure_window
        self._monotonic = backends.clocks.monotonic
        self._lock = threading.Lock()
        self._local: dict[str, tuple[float, int]] = {}

    def count(self, subject: str) -> int:
        if self._redis is not None:
            return self._redis.login_failures(subject)
        with self._lock:
            start, failures = self._local.get(subject, (0.0, 0))
            return failures if self._monotonic() - start < self._window else 0

    def add(self, *subjects: str) -> None:
        window = self._window
        if self._redis is not None:
            self._redis.add_login_failures(subjects, window)
            return
        with self._lock:
            now = self._monotonic()
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

    def __init__(self, backends: Backends) -> None:
        self._redis = backends.redis
        self._monotonic = backends.clocks.monotonic
        self._lock = threading.Lock()
        self._local: dict[str, tuple[float, str]] = {}

    def remember(self, kid: str, digest: str) -> None:
        if self._redis is not None:
            self._redis.remember_login(kid, digest, KNOWN_SECRET_TTL)
            return
        with self._lock:
            self._local.pop(kid, None)  # re-insert: dict order is the age order
            self._local[kid] = (self._monotonic() + KNOWN_SECRET_TTL, digest)
            while len(self._local) > _LOCAL_LIMIT:
                del self._local[next(iter(self._local))]

    def matches(self, kid: str, digest: str) -> bool:
        if self._redis is not None:
            known_digest = self._redis.known_login(kid)
        else:
            with self._lock:
                expires, known_digest = self._local.get(kid, (0.0, None))
                if expires <= self._monotonic():
                    known_digest = None
        return known_digest is not None and hmac.compare_digest(known_digest, digest)
