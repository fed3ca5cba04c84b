"""Failure limits: per client (logins), per key id (every path), and the known credential that
passes a key's limit.

A client that fails ``login_max_failures`` logins in ``login_failure_window`` seconds is refused
(429) before any argon2 run. A key id is not secret (it is in the token, in listings, in the
audit log), so its wrong secrets are counted on every path, requests and logins alike: past
``login_max_failures_per_key`` in the window, a wrong secret for it is refused before argon2
runs (the core asks, :mod:`keystile._core.verification`), which stops both a guessing campaign
spread over many addresses and argon2 runs bought on demand. A limit on a key alone would let
anyone lock its owner out, so while it holds, a credential whose digest is the key's known one
still goes through: the keyed digest the verification cache uses, recorded when the key is
created or rolled (before anyone can have used it) and after each successful verification,
kept for ``KNOWN_SECRET_TTL``.
"""

from __future__ import annotations

import hmac
import threading

from keystile._backends.backends import Backends

KNOWN_SECRET_TTL = 400 * 24 * 3600  # refreshed by every verification that ran argon2
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


def key_subject(kid: str) -> str:
    """The failure counter of a key id (shared by requests and logins)."""
    return f"key:{kid}"


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


class FailureLimits:
    """The counters and the known credentials, one of each per engine: requests, logins and
    key changes share them (without Redis, they live in this process)."""

    def __init__(self, backends: Backends) -> None:
        self.failures = FailureCounter(backends)
        self.known = KnownSecrets(backends)

    def key_failures(self, kid: str) -> int:
        return self.failures.count(key_subject(kid))

    def key_failed(self, kid: str) -> None:
        self.failures.add(key_subject(kid))
