"""argon2id hashing of key secrets, with a cap on how many runs go at once."""

from __future__ import annotations

import threading

from argon2 import PasswordHasher, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError

from keystile._core.errors import TOO_MANY_ATTEMPTS, AuthError
from keystile._core.models import KeyRecord
from keystile._core.settings import Argon2Params


class HasherBusy(Exception):
    """Every argon2 slot stayed taken for ``argon2_queue_timeout``: answer fast, don't pile up."""


class SecretHasher:
    def __init__(
        self, params: Argon2Params, max_concurrency: int, queue_timeout: float | None = None
    ) -> None:
        self._hasher = PasswordHasher(
            time_cost=params.time_cost,
            memory_cost=params.memory_cost,
            parallelism=params.parallelism,
        )
        # Bounds CPU and memory under a flood of cold or wrong keys; excess callers wait here,
        # in a worker thread, never on the event loop.
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._queue_timeout = queue_timeout

    def hash(self, secret: str) -> str:
        with self._slots:
            return self._hasher.hash(secret)

    def verify(self, hashed: str, secret: str) -> bool:
        if not self._slots.acquire(timeout=self._queue_timeout):
            raise HasherBusy
        try:
            return self._hasher.verify(hashed, secret)
        except (VerificationError, InvalidHashError):
            return False
        finally:
            self._slots.release()

    def needs_rehash(self, hashed: str) -> bool:
        """True only when the settings are at least as strong in every parameter: an old
        process in a rolling deploy must not rewrite a stronger hash with a weaker one."""
        try:
            current = extract_parameters(hashed)
        except InvalidHashError:
            return False
        wanted = self._hasher
        stronger = (
            wanted.time_cost >= current.time_cost
            and wanted.memory_cost >= current.memory_cost
            and wanted.parallelism >= current.parallelism
        )
        return stronger and self._hasher.check_needs_rehash(hashed)

    def __repr__(self) -> str:
        return "SecretHasher()"


def match_secret(
    hasher: SecretHasher, record: KeyRecord, secret: str, now: float
) -> tuple[str | None, str | None]:
    """Which stored hash ``secret`` matches (the current one, or the previous one within its
    grace), and a new hash when the settings ask for a stronger one.

    Refuses with a fast 429 when every argon2 slot stays busy (a flood of cold or wrong keys,
    or of logins) rather than letting requests queue without end."""
    try:
        if hasher.verify(record.secret_hash, secret):
            new_hash = None
            if hasher.needs_rehash(record.secret_hash):
                new_hash = hasher.hash(secret)
            return record.secret_hash, new_hash
        grace = record.previous_expires_at
        in_grace = record.previous_hash and grace and grace.timestamp() > now
        if in_grace and hasher.verify(record.previous_hash or "", secret):
            return record.previous_hash, None
    except HasherBusy:
        raise AuthError(
            TOO_MANY_ATTEMPTS,
            "Too many key checks in progress; retry shortly.",
            {"retry-after": "1"},
        ) from None
    return None, None
