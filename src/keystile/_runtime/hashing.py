"""argon2id hashing of key secrets, with a cap on how many runs go at once."""

from __future__ import annotations

import threading

from argon2 import PasswordHasher, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError

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
