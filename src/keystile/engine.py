"""The :class:`Keystile` engine every adapter shares, and the two drivers of its steps.

:mod:`keystile.verification` says what to do; this module does the I/O, blocking
(:meth:`Keystile.authenticate`) or without blocking the event loop
(:meth:`Keystile.authenticate_async`: argon2 and blocking store calls go to a thread).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import Any, TypeVar

import redis

from . import tokens
from .credentials import read_credentials
from .errors import AuthError, BackendError
from .hashing import SecretHasher
from .keys import KeyManager
from .localcache import LocalCache
from .models import KeyRecord
from .principal import Principal
from .redisio import AsyncRedis, RedisKeys, SyncRedis
from .settings import Settings, load_settings
from .singleflight import AsyncSingleFlight, SyncSingleFlight
from .stores import KeyStore, open_store
from .verification import Snapshot, Steps, Verifier

log = logging.getLogger("keystile")
T = TypeVar("T")
_REDIS_ERRORS = (redis.RedisError, OSError)


class Keystile:
    """Validated settings, the store, the caches and the verification steps.

    ``clock`` returns the wall time in epoch seconds; tests pass their own to move time.
    """

    def __init__(
        self,
        settings: Mapping[str, Any] | Settings | None = None,
        *,
        clock: Callable[[], float] | None = None,
        store: KeyStore | None = None,
    ) -> None:
        self.settings = load_settings(settings)
        self.clock = clock or time.time
        self.store: KeyStore = store if store is not None else open_store(self.settings.store)
        self.hasher = SecretHasher(self.settings.argon2, self.settings.argon2_max_concurrency)
        secret = self.settings.secret
        # Without Redis nothing leaves the process, so a per-process digest key will do.
        self._digest_key = secret.encode() if secret else secrets.token_bytes(32)
        self.redis_keys = RedisKeys(self.settings.redis_prefix)
        self._sync_redis: SyncRedis | None = None
        self._async_redis = AsyncRedis(self.settings) if self.settings.redis_url else None
        self.local: LocalCache[Snapshot | str] = LocalCache(
            self.settings.local_cache_size, time.monotonic
        )
        self.verifier = Verifier(self.settings, self.local, self.has_redis)
        self.keys = KeyManager(self)
        self._flights = SyncSingleFlight()
        self._async_flights = AsyncSingleFlight()
        self._last_used: dict[str, datetime] = {}
        self._last_used_lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._background: set[asyncio.Task[Any]] = set()

    @property
    def has_redis(self) -> bool:
        return self.settings.redis_url is not None

    @property
    def redis(self) -> SyncRedis:
        if self._sync_redis is None:
            self._sync_redis = SyncRedis(self.settings)
        return self._sync_redis

    @property
    def async_redis(self) -> AsyncRedis:
        assert self._async_redis is not None
        return self._async_redis

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), timezone.utc)

    def is_exempt(self, path: str) -> bool:
        return self.settings.is_exempt(path)

    def digest(self, token: tokens.ParsedToken) -> str:
        return tokens.digest(self._digest_key, token)

    # -- authentication ---------------------------------------------------------------------

    def authenticate(self, headers: Iterable[tuple[str, str]]) -> Principal:
        """Blocking: the principal for these headers, or :class:`AuthError`."""
        creds = read_credentials(headers, self.settings.token_prefix, self.settings.environments)
        snapshot: Snapshot = self._drive(self.verifier.resolve(creds.token, self.digest(creds.token)))
        principal = self.verifier.authorize(
            snapshot, creds.auth_method, creds.account_id, self.clock()
        )
        if self._note_use(snapshot.kid):
            self.flush_last_used()
        return principal

    async def authenticate_async(self, headers: Iterable[tuple[str, str]]) -> Principal:
        """Async: never blocks the event loop."""
        creds = read_credentials(headers, self.settings.token_prefix, self.settings.environments)
        steps = self.verifier.resolve(creds.token, self.digest(creds.token))
        snapshot: Snapshot = await self._drive_async(steps)
        principal = self.verifier.authorize(
            snapshot, creds.auth_method, creds.account_id, self.clock()
        )
        if self._note_use(snapshot.kid):
            self._spawn(asyncio.to_thread(self.flush_last_used))
        return principal

    # -- last use, batched ------------------------------------------------------------------

    def _note_use(self, kid: str) -> bool:
        """Remember a use; True when a flush is due (every ``last_used_interval`` seconds)."""
        with self._last_used_lock:
            self._last_used[kid] = self.now()
            due = time.monotonic() - self._last_flush >= self.settings.last_used_interval
            if due:
                self._last_flush = time.monotonic()
            return due

    def flush_last_used(self) -> None:
        with self._last_used_lock:
            batch, self._last_used = self._last_used, {}
        if not batch:
            return
        try:
            self.store.touch(batch)
        except Exception as exc:  # a lost last_used_at is not worth failing a request for
            log.warning("keystile: could not record last use (%s)", type(exc).__name__)

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- drivers ----------------------------------------------------------------------------

    def _drive(self, steps: Steps) -> Any:
        result: Any = None
        error: BaseException | None = None
        while True:
            try:
                operation, args = steps.throw(error) if error else steps.send(result)
            except StopIteration as done:
                return done.value
            result, error = None, None
            try:
                result = getattr(self, f"_op_{operation}")(*args)
            except _REDIS_ERRORS as exc:
                error = _backend_error(operation, exc)
            except Exception as exc:
                if not operation.startswith("store_") or isinstance(exc, AuthError):
                    raise
                error = _backend_error(operation, exc)

    async def _drive_async(self, steps: Steps) -> Any:
        result: Any = None
        error: BaseException | None = None
        while True:
            try:
                operation, args = steps.throw(error) if error else steps.send(result)
            except StopIteration as done:
                return done.value
            result, error = None, None
            try:
                result = await getattr(self, f"_aop_{operation}")(*args)
            except _REDIS_ERRORS as exc:
                error = _backend_error(operation, exc)
            except Exception as exc:
                if not operation.startswith("store_") or isinstance(exc, AuthError):
                    raise
                error = _backend_error(operation, exc)

    async def _in_thread(self, blocking: bool, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args) if blocking else fn(*args)

    # Blocking operations.

    def _op_store_get(self, kid: str) -> KeyRecord | None:
        return self.store.get(kid)

    def _op_store_set_hash(self, kid: str, old_hash: str, new_hash: str) -> None:
        self.store.set_hash(kid, old_hash, new_hash)

    def _op_argon2_verify(self, record: KeyRecord, secret: str) -> tuple[str | None, str | None]:
        """Which stored hash the secret matches (current, or previous within grace)."""
        if self.hasher.verify(record.secret_hash, secret):
            new_hash = None
            if self.hasher.needs_rehash(record.secret_hash):
                new_hash = self.hasher.hash(secret)
            return record.secret_hash, new_hash
        grace = record.previous_expires_at
        if record.previous_hash and grace and grace.timestamp() > self.clock():
            if self.hasher.verify(record.previous_hash, secret):
                return record.previous_hash, None
        return None, None

    def _op_redis_version(self, account_id: str, kid: str) -> str | None:
        value: str | None = self.redis.client.get(self.redis_keys.state(account_id, kid))
        return value

    def _op_redis_fetch(self, kid: str, digest: str) -> str | None:
        value: str | None = self.redis.client.get(self.redis_keys.snapshot(kid, digest))
        return value

    def _op_redis_adopt(self, account_id: str, kid: str, version: str) -> str:
        script = self.redis.scripts["adopt"]
        return str(script(keys=[self.redis_keys.state(account_id, kid)], args=[version]))

    def _op_redis_put(self, kid: str, digest: str, value: str, ttl: int) -> None:
        self.redis.client.set(self.redis_keys.snapshot(kid, digest), value, ex=ttl)

    def _op_single_flight(self, digest: str, token: tokens.ParsedToken) -> Snapshot:
        return self._flights.run(digest, lambda: self._drive(self.verifier.slow(token, digest)))

    # Async operations.

    async def _aop_store_get(self, kid: str) -> KeyRecord | None:
        return await self._in_thread(self.store.blocking, self.store.get, kid)

    async def _aop_store_set_hash(self, kid: str, old_hash: str, new_hash: str) -> None:
        await self._in_thread(self.store.blocking, self.store.set_hash, kid, old_hash, new_hash)

    async def _aop_argon2_verify(
        self, record: KeyRecord, secret: str
    ) -> tuple[str | None, str | None]:
        return await asyncio.to_thread(self._op_argon2_verify, record, secret)

    async def _aop_redis_version(self, account_id: str, kid: str) -> str | None:
        value: str | None = await self.async_redis.client.get(
            self.redis_keys.state(account_id, kid)
        )
        return value

    async def _aop_redis_fetch(self, kid: str, digest: str) -> str | None:
        value: str | None = await self.async_redis.client.get(
            self.redis_keys.snapshot(kid, digest)
        )
        return value

    async def _aop_redis_adopt(self, account_id: str, kid: str, version: str) -> str:
        script = self.async_redis.scripts["adopt"]
        return str(await script(keys=[self.redis_keys.state(account_id, kid)], args=[version]))

    async def _aop_redis_put(self, kid: str, digest: str, value: str, ttl: int) -> None:
        await self.async_redis.client.set(self.redis_keys.snapshot(kid, digest), value, ex=ttl)

    async def _aop_single_flight(self, digest: str, token: tokens.ParsedToken) -> Snapshot:
        return await self._async_flights.run(
            digest, lambda: self._drive_async(self.verifier.slow(token, digest))
        )

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        self.flush_last_used()
        if self._sync_redis is not None:
            self._sync_redis.close()
        self.store.close()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.flush_last_used)
        if self._async_redis is not None:
            await self._async_redis.aclose()

    def __repr__(self) -> str:
        return f"Keystile({self.settings!r})"


def _backend_error(operation: str, exc: BaseException) -> BackendError:
    error = BackendError(f"{operation} failed: {type(exc).__name__}")
    error.__cause__ = exc
    return error
