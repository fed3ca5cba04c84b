"""The :class:`Keystile` engine every adapter shares, and the two drivers of its steps.

:mod:`keystile._core.verification` says what to do; this module does the I/O, blocking
(:meth:`Keystile.authenticate`) or without blocking the event loop
(:meth:`Keystile.authenticate_async`: argon2 and blocking store calls go to a thread).
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
import logging
import secrets
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import Any, TypeVar

import redis

from keystile._core import tokens
from keystile._core.admission import Admission, MeterCall, RequestInfo
from keystile._core.credentials import Credentials, read_credentials
from keystile._core.errors import TOO_MANY_ATTEMPTS, AuthError, BackendError
from keystile._core.localcache import LocalCache
from keystile._core.metering import Meter, ThresholdEvent
from keystile._core.models import KeyRecord
from keystile._core.periods import PeriodPolicy
from keystile._core.principal import Principal
from keystile._core.rediskeys import (
    KIDS_READY,
    KIDS_RESEED_SECONDS,
    RedisKeys,
)
from keystile._core.settings import Settings, load_settings
from keystile._core.store import AccountLimit, SessionRecord, UsageRow
from keystile._core.verification import Snapshot, Steps, Verifier
from keystile._redis.invalidation import InvalidationListener, invalidation_channel
from keystile._redis.scripts import AsyncRedis, SyncRedis
from keystile._runtime.flusher import Flusher
from keystile._runtime.hashing import HasherBusy, SecretHasher
from keystile._runtime.singleflight import AsyncSingleFlight, SyncSingleFlight
from keystile._services.audit import AuditLog
from keystile._services.keys import KeyManager
from keystile._services.quotas import QuotaManager, UsageReport
from keystile._services.sessions import SessionManager
from keystile.stores import KeyStore, open_store

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
        self.hasher = SecretHasher(
            self.settings.argon2,
            self.settings.argon2_max_concurrency,
            self.settings.argon2_queue_timeout,
        )
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
        self.listener: InvalidationListener | None = None
        if self.settings.consistency == "fast":
            assert self.settings.redis_url
            self.listener = InvalidationListener(
                self.settings.redis_url,
                self.invalidation_channel,
                on_invalidate=self.local.drop_group,
                on_resync=self.local.clear,
                timeout=self.settings.redis_timeout,
            )
            self.verifier.listener = self.listener
            self.listener.start()
        self.periods = PeriodPolicy(
            self.settings.billing_anchor_day, self.settings.billing_timezone
        )
        self.admission = Admission(
            self.settings, self.verifier, self.periods, lambda: self.clock(), self.redis_keys
        )
        self.keys = KeyManager(self)
        self.quotas = QuotaManager(self)
        self.audit = AuditLog(self)
        self.sessions = SessionManager(self)
        self._flights = SyncSingleFlight()
        self._async_flights = AsyncSingleFlight()
        self._last_used: dict[str, float] = {}
        self._last_used_lock = threading.Lock()
        interval = min(self.settings.last_used_interval, self.settings.usage_flush_interval)
        self._flusher = Flusher(self.flush, interval)
        self._flusher_idle = True
        self._background: set[asyncio.Task[Any]] = set()
        self._exempt = set(self.settings.exempt_exact)
        self._exempt_prefixes = self.settings.exempt_prefixes
        _UNCLOSED.add(self)

    @property
    def has_redis(self) -> bool:
        return self.settings.redis_url is not None

    @property
    def invalidation_channel(self) -> str:
        return invalidation_channel(self.settings.redis_prefix)

    def ready(self, timeout: float = 5.0) -> bool:
        """Fast mode: wait until this process hears every key change (until then it checks
        each request with Redis, as strict mode does). True at once in strict mode."""
        return self.listener is None or self.listener.wait_healthy(timeout)

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
        prefixes = self._exempt_prefixes
        return path in self._exempt or (bool(prefixes) and path.startswith(prefixes))

    def exempt(self, path: str) -> None:
        """Let one more exact path through unauthenticated (the management API's login)."""
        self._exempt.add(path)

    def mount_management(self, prefix: str) -> None:
        """Where an adapter mounted the management API: its public paths skip
        authentication, and its requests cost no pages (still counted as requests)."""
        from keystile._http.management import PUBLIC_PATHS

        prefix = prefix.rstrip("/")
        for path in PUBLIC_PATHS:
            self.exempt(prefix + path)
        if prefix not in self.admission.management_prefixes:
            self.admission.management_prefixes += (prefix,)

    def digest(self, token: tokens.ParsedToken) -> str:
        return tokens.digest(self._digest_key, token)

    # -- requests ---------------------------------------------------------------------------

    def _request(
        self, headers: list[tuple[str, str]], method: str, path: str, query: str, body: Any
    ) -> tuple[Credentials, str, RequestInfo, bool]:
        creds = read_credentials(headers, self.settings.token_prefix, self.settings.environments)
        reader = body if callable(body) else (lambda: body)
        request = RequestInfo(method, path, headers, query, reader)
        return creds, self.digest(creds.token), request, creds.idempotent

    def authenticate(
        self,
        headers: Iterable[tuple[str, str]],
        method: str = "GET",
        path: str = "/",
        *,
        query: str = "",
        body: BodyArgument = b"",
    ) -> Principal:
        """Blocking: the metered principal for these headers, or :class:`AuthError`.

        ``query`` and ``body`` matter only with an ``Idempotency-Key`` header. ``body`` is
        the body, or a callable that reads it, called only once the credential is verified
        (an async one for :meth:`authenticate_async`); ``None``: too large to compare, so the
        request is charged even when its key was seen. Adapters call :meth:`settle` once the
        response status is known.
        """
        headers = headers if isinstance(headers, list) else list(headers)
        creds, digest, request, idempotent = self._request(headers, method, path, query, body)
        admission = self.admission
        admitted = None
        if not idempotent:
            warm = admission.warm(creds, digest, request, self.clock())
            if warm.__class__ is MeterCall:
                assert isinstance(warm, MeterCall)
                try:
                    reply = self._op_redis_meter(warm.keys, warm.args)
                except _REDIS_ERRORS as exc:
                    admitted = admission.meter_failed(warm, _backend_error("redis_meter", exc))
                else:
                    admitted = admission.metered(warm, reply)
            else:
                admitted = warm  # type: ignore[assignment]
        if admitted is None:
            admitted = self._drive(admission.admit(creds, digest, request))
        principal, meter, crossed = admitted
        if crossed:
            self._fire_thresholds(meter, crossed)
        self._note_use(meter.charge_info.kid)
        return principal

    async def authenticate_async(
        self,
        headers: Iterable[tuple[str, str]],
        method: str = "GET",
        path: str = "/",
        *,
        query: str = "",
        body: BodyArgument = b"",
    ) -> Principal:
        """Async: never blocks the event loop."""
        headers = headers if isinstance(headers, list) else list(headers)
        creds, digest, request, idempotent = self._request(headers, method, path, query, body)
        admission = self.admission
        admitted = None
        if not idempotent:
            warm = admission.warm(creds, digest, request, self.clock())
            if warm.__class__ is MeterCall:
                assert isinstance(warm, MeterCall)
                try:
                    reply = await self._aop_redis_meter(warm.keys, warm.args)
                except _REDIS_ERRORS as exc:
                    admitted = admission.meter_failed(warm, _backend_error("redis_meter", exc))
                else:
                    admitted = admission.metered(warm, reply)
            else:
                admitted = warm  # type: ignore[assignment]
        if admitted is None:
            admitted = await self._drive_async(admission.admit(creds, digest, request))
        principal, meter, crossed = admitted
        if crossed:
            self._spawn(asyncio.to_thread(self._fire_thresholds, meter, crossed))
        self._note_use(meter.charge_info.kid)
        return principal

    def verify(self, creds: Credentials) -> Principal:
        """Blocking: check a credential without metering it."""
        return self.verify_with_snapshot(creds)[0]

    def verify_with_snapshot(self, creds: Credentials) -> tuple[Principal, Snapshot]:
        """:meth:`verify`, with what it read of the key (its version; a grace secret's end)."""
        verified: tuple[Principal, Snapshot] = self._drive(
            self.admission.verify(creds, self.digest(creds.token))
        )
        return verified

    def settle(self, principal: Principal | None, status_code: int | None) -> None:
        """After the response: charge the real cost, or refund (status not counted, or None
        for an unhandled exception). Costs no I/O when the reservation was right."""
        meter = None if principal is None else principal.meter
        if meter is not None:
            call = self.admission.settle_call(meter, status_code)
            if call is not None:
                try:
                    self._op_redis_settle(call[1], call[2])
                except _REDIS_ERRORS:
                    self.admission.settle_failed(call[0])

    async def settle_async(self, principal: Principal | None, status_code: int | None) -> None:
        meter = None if principal is None else principal.meter
        if meter is not None:
            call = self.admission.settle_call(meter, status_code)
            if call is not None:
                try:
                    await self._aop_redis_settle(call[1], call[2])
                except _REDIS_ERRORS:
                    self.admission.settle_failed(call[0])

    def reserve(self, principal: Principal, pages: int) -> None:
        """Raise the request's reservation to a route's declared cost (BILLING_001 if over)."""
        if principal.meter is not None:
            crossed = self._drive(self.admission.reserve(principal.meter, pages))
            if crossed:
                self._fire_thresholds(principal.meter, crossed)

    async def reserve_async(self, principal: Principal, pages: int) -> None:
        if principal.meter is not None:
            crossed = await self._drive_async(self.admission.reserve(principal.meter, pages))
            if crossed:
                self._spawn(asyncio.to_thread(self._fire_thresholds, principal.meter, crossed))

    def usage(
        self, account_id: str, month: str | None = None, environment: str | None = None
    ) -> UsageReport:
        """An account's usage for ``month`` ("YYYY-MM"; default: this period), per key, with
        the 12 months up to it. Same as ``ks.quotas.usage``."""
        return self.quotas.usage(account_id, month, environment)

    def quota_headers(self, principal: Principal | None) -> list[tuple[str, str]]:
        """RateLimit headers for a metered response (empty when unlimited)."""
        if principal is None or principal.meter is None:
            return []
        meter = principal.meter
        return [] if meter.limit is None else self.admission.headers(meter)

    def _fire_thresholds(self, meter: Meter, crossed: tuple[float, ...]) -> None:
        hook = self.settings.on_quota_threshold
        status = meter.status
        if hook is None or status.limit is None:
            return
        for threshold in crossed:
            event = ThresholdEvent(
                meter.charge_info.account_id,
                meter.charge_info.environment,
                status.period,
                threshold,
                status.limit,
                status.used,
            )
            try:
                hook(event)
            except Exception:  # the app's hook must never fail a request
                log.exception("keystile: on_quota_threshold hook failed")

    # -- batched writes: last use, usage ----------------------------------------------------

    def _note_use(self, kid: str) -> None:
        # No lock: one dict store is atomic, and a use noted into a batch just taken by the
        # flusher is noted again by the key's next request.
        self._last_used[kid] = self.clock()
        if self._flusher_idle:
            self._flusher_idle = False
            self._flusher.start()

    def flush(self) -> None:
        """Write batched last-use times and usage to the store; have Redis rebuild the
        counters an outage left uncertain."""
        # Leases first: should Redis have lost a counter meanwhile, it is rebuilt from the
        # store, which then does not hold this flush yet (an error in the customer's favour).
        self._report_leases()
        with self._last_used_lock:
            taken, self._last_used = self._last_used, {}
        batch = {kid: datetime.fromtimestamp(at, timezone.utc) for kid, at in taken.items()}
        try:
            if batch:
                self.store.touch(batch)
        except Exception as exc:  # a lost last_used_at is not worth failing a request for
            log.warning("keystile: could not record last use (%s)", type(exc).__name__)
        self._flush_sessions()
        deltas = self.admission.buffer.take()
        if deltas:
            try:
                self.store.add_usage(deltas)
            except Exception as exc:
                self.admission.buffer.give_back(deltas)
                log.warning("keystile: could not write usage, will retry (%s)", type(exc).__name__)
        if self.has_redis:
            self._reconcile()

    def _report_leases(self) -> None:
        """Fast mode: report the pages spent from leases and give every unused page back."""
        calls = self.admission.lease_reports(keep=False)
        for index, (report, keys, args) in enumerate(calls):
            try:
                reply = self.redis.scripts["lease_report"](keys=keys, args=args)
            except _REDIS_ERRORS as exc:
                assert self.admission.leases is not None
                self.admission.leases.give_back(r for r, _, _ in calls[index:])
                log.warning(
                    "keystile: could not report leases, will retry (%s)", type(exc).__name__
                )
                return
            self.admission.lease_reported(report, reply)

    def _flush_sessions(self) -> None:
        seen = self.verifier.session_seen
        if not seen:
            return
        batch = {sid: datetime.fromtimestamp(at, timezone.utc) for sid, at in list(seen.items())}
        try:
            self.store.touch_sessions(batch)
        except Exception as exc:
            log.warning("keystile: could not record session use (%s)", type(exc).__name__)
            return
        # Forget sessions idle for longer than any session may live.
        cutoff = self.clock() - self.settings.session_ttl
        for sid, at in list(seen.items()):
            if at < cutoff:
                seen.pop(sid, None)

    def _reconcile(self) -> None:
        """Counters a failed Redis call may have changed leave Redis: the next request
        rebuilds each from the store plus this process's unflushed charges, which are exact.
        Re-sending the increments instead could count a timed-out one twice."""
        counters = self.admission.uncertain.take()
        for index, (account_id, period, environment) in enumerate(counters):
            try:
                self.redis.client.delete(self.redis_keys.usage(account_id, period, environment))
            except _REDIS_ERRORS:
                self.admission.uncertain.give_back(counters[index:])
                return

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
            except Exception as exc:
                error = _as_backend_error(operation, exc)

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
            except Exception as exc:
                error = _as_backend_error(operation, exc)

    async def _in_thread(self, blocking: bool, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args) if blocking else fn(*args)

    # Blocking operations.

    def _op_store_get(self, kid: str) -> KeyRecord | None:
        return self.store.get(kid)

    def _op_store_set_hash(self, kid: str, old_hash: str, new_hash: str) -> None:
        self.store.set_hash(kid, old_hash, new_hash)

    def _op_argon2_verify(self, record: KeyRecord, secret: str) -> tuple[str | None, str | None]:
        """Which stored hash the secret matches (current, or previous within grace).

        Refuses with a fast 429 when every argon2 slot stays busy (a flood of cold or wrong
        keys, or of logins) rather than letting requests queue without end."""
        try:
            return self._argon2_match(record, secret)
        except HasherBusy:
            raise AuthError(
                TOO_MANY_ATTEMPTS,
                "Too many key checks in progress; retry shortly.",
                {"retry-after": "1"},
            ) from None

    def _argon2_match(self, record: KeyRecord, secret: str) -> tuple[str | None, str | None]:
        if self.hasher.verify(record.secret_hash, secret):
            new_hash = None
            if self.hasher.needs_rehash(record.secret_hash):
                new_hash = self.hasher.hash(secret)
            return record.secret_hash, new_hash
        grace = record.previous_expires_at
        in_grace = record.previous_hash and grace and grace.timestamp() > self.clock()
        if in_grace and self.hasher.verify(record.previous_hash or "", secret):
            return record.previous_hash, None
        return None, None

    def _op_redis_version(self, account_id: str, kid: str) -> str | None:
        value: str | None = self.redis.client.get(  # type: ignore[assignment]
            self.redis_keys.state(account_id, kid)
        )
        return value

    def _op_redis_fetch(self, kid: str, digest: str) -> str | None:
        value: str | None = self.redis.client.get(  # type: ignore[assignment]
            self.redis_keys.snapshot(kid, digest)
        )
        return value

    #: How often an engine may start seeding the key-id set, and how long its lock may live.
    _KIDS_SEED_INTERVAL = 5.0
    _KIDS_SEED_LOCK_TTL = 120
    _kids_seed_after = 0.0  # monotonic time before which no new seeding starts

    @staticmethod
    def _known_reply(reply: list[Any]) -> tuple[str | None, bool, bool]:
        """The fetch_known script's reply: ``(snapshot or None, member, seeded)``."""
        return (reply[2] if len(reply) > 2 else None), reply[0] == 1, reply[1] == 1

    def _op_redis_fetch_known(self, kid: str, digest: str) -> tuple[str | None, bool, bool]:
        """``(snapshot or None, kid in the key-id set, set seeded)``: one EVALSHA."""
        script = self.redis.scripts["fetch_known"]
        keys = [self.redis_keys.snapshot(kid, digest), self.redis_keys.kids()]
        return self._known_reply(script(keys=keys, args=[kid, KIDS_READY]))

    def _op_kids_seed(self) -> None:
        """The key-id set is not seeded: a background thread seeds it from the store (one
        thread per engine at a time, started at most every few seconds; one engine of all
        that share the Redis does the work, under a lock key)."""
        now = time.monotonic()
        if now < self._kids_seed_after:
            return
        self._kids_seed_after = now + self._KIDS_SEED_INTERVAL
        if getattr(self.store, "all_kids", None) is None:
            return  # a store without the listing: the set stays unseeded, as without it
        thread = threading.Thread(target=self._seed_kids, name="keystile-kids", daemon=True)
        thread.start()
        self._kids_seeder = thread

    def _seed_kids(self) -> None:
        keys = self.redis_keys
        own = SyncRedis(self.settings)  # its own connection: requests' calls stay theirs
        client = own.client
        try:
            if client.sismember(keys.kids(), KIDS_READY):
                return
            token = secrets.token_hex(16)
            if not client.set(keys.kids_lock(), token, nx=True, ex=self._KIDS_SEED_LOCK_TTL):
                return  # another engine is seeding
            seeded = "0"
            try:
                # Only adds: an id created meanwhile (SADDed by keys.create) stays in.
                kids = list(self.store.all_kids())
                for start in range(0, len(kids), 1000):
                    client.sadd(keys.kids(), *kids[start : start + 1000])
                seeded = "1"
            finally:
                own.scripts["seed_done"](
                    keys=[keys.kids(), keys.kids_lock()],
                    args=[token, KIDS_READY, seeded, KIDS_RESEED_SECONDS],
                )
        except Exception as exc:  # the set stays unseeded: lookups go to the store, as before
            log.warning("keystile: could not seed the key-id set (%s)", type(exc).__name__)
        finally:
            own.close()

    def _op_redis_adopt(self, account_id: str, kid: str, version: str, stale: str) -> str:
        script = self.redis.scripts["adopt"]
        return str(script(keys=[self.redis_keys.state(account_id, kid)], args=[version, stale]))

    def _op_redis_put(self, kid: str, digest: str, value: str, ttl: int) -> None:
        self.redis.client.set(self.redis_keys.snapshot(kid, digest), value, ex=ttl)

    def _op_redis_meter(self, keys: list[str], args: list[Any]) -> list[Any]:
        reply: list[Any] = self.redis.scripts["meter"](keys=keys, args=args)
        return reply

    def _op_request_body(self, reader: Callable[[], bytes | None]) -> bytes | None:
        return reader()

    def _op_redis_lease(self, keys: list[str], args: list[Any]) -> list[Any]:
        reply: list[Any] = self.redis.scripts["lease"](keys=keys, args=args)
        return reply

    def _op_redis_settle(self, keys: list[str], args: list[Any]) -> None:
        self.redis.scripts["settle"](keys=keys, args=args)

    def _op_store_usage(self, account_id: str, periods: tuple[str, ...]) -> list[UsageRow]:
        return self.store.usage(account_id, periods)

    def _op_store_get_limit(self, account_id: str) -> AccountLimit | None:
        return self.store.get_limit(account_id)

    def _op_store_get_session(self, sid: str) -> SessionRecord | None:
        return self.store.get_session(sid)

    def _op_single_flight(self, digest: str, token: tokens.ParsedToken) -> Snapshot:
        snapshot: Snapshot = self._flights.run(
            digest, lambda: self._drive(self.verifier.slow(token, digest))
        )
        return snapshot

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
        value: str | None = await self.async_redis.client.execute_command(
            "GET", self.redis_keys.state(account_id, kid)
        )
        return value

    async def _aop_redis_fetch(self, kid: str, digest: str) -> str | None:
        value: str | None = await self.async_redis.client.execute_command(
            "GET", self.redis_keys.snapshot(kid, digest)
        )
        return value

    async def _aop_redis_fetch_known(self, kid: str, digest: str) -> tuple[str | None, bool, bool]:
        keys = [self.redis_keys.snapshot(kid, digest), self.redis_keys.kids()]
        reply = await self.async_redis.scripts["fetch_known"](keys=keys, args=[kid, KIDS_READY])
        return self._known_reply(reply)

    async def _aop_kids_seed(self) -> None:
        self._op_kids_seed()  # only starts a thread

    async def _aop_redis_adopt(self, account_id: str, kid: str, version: str, stale: str) -> str:
        script = self.async_redis.scripts["adopt"]
        keys = [self.redis_keys.state(account_id, kid)]
        return str(await script(keys=keys, args=[version, stale]))

    async def _aop_redis_put(self, kid: str, digest: str, value: str, ttl: int) -> None:
        key = self.redis_keys.snapshot(kid, digest)
        await self.async_redis.client.execute_command("SET", key, value, "EX", ttl)

    async def _aop_redis_meter(self, keys: list[str], args: list[Any]) -> list[Any]:
        reply: list[Any] = await self.async_redis.scripts["meter"](keys=keys, args=args)
        return reply

    async def _aop_request_body(self, reader: Callable[[], Any]) -> bytes | None:
        body = reader()
        result: bytes | None = await body if inspect.isawaitable(body) else body
        return result

    async def _aop_redis_lease(self, keys: list[str], args: list[Any]) -> list[Any]:
        reply: list[Any] = await self.async_redis.scripts["lease"](keys=keys, args=args)
        return reply

    async def _aop_redis_settle(self, keys: list[str], args: list[Any]) -> None:
        await self.async_redis.scripts["settle"](keys=keys, args=args)

    async def _aop_store_usage(self, account_id: str, periods: tuple[str, ...]) -> list[UsageRow]:
        return await self._in_thread(self.store.blocking, self.store.usage, account_id, periods)

    async def _aop_store_get_limit(self, account_id: str) -> AccountLimit | None:
        return await self._in_thread(self.store.blocking, self.store.get_limit, account_id)

    async def _aop_store_get_session(self, sid: str) -> SessionRecord | None:
        return await self._in_thread(self.store.blocking, self.store.get_session, sid)

    async def _aop_single_flight(self, digest: str, token: tokens.ParsedToken) -> Snapshot:
        return await self._async_flights.run(
            digest, lambda: self._drive_async(self.verifier.slow(token, digest))
        )

    # -- lifecycle --------------------------------------------------------------------------

    async def shutdown_async(self) -> None:
        """The ASGI app is stopping (lifespan shutdown): write what is batched and let go of
        this event loop's Redis connections. The engine stays usable."""
        await asyncio.to_thread(self.flush)
        if self._async_redis is not None:
            await self._async_redis.aclose()

    def close(self) -> None:
        _UNCLOSED.discard(self)
        if self.listener is not None:
            self.listener.stop()
        self._flusher.stop()
        self.flush()
        if self._sync_redis is not None:
            self._sync_redis.close()
        self.store.close()

    async def aclose(self) -> None:
        _UNCLOSED.discard(self)
        if self.listener is not None:
            await asyncio.to_thread(self.listener.stop)
        self._flusher.stop()
        await asyncio.to_thread(self.flush)
        if self._async_redis is not None:
            await self._async_redis.aclose()

    def __repr__(self) -> str:
        return f"Keystile({self.settings!r})"


# Engines nobody closed (a WSGI or Django process just exits): their batched usage and last
# use times are written when the interpreter ends, not lost with the daemon flusher thread.
_UNCLOSED: weakref.WeakSet[Keystile] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    for engine in list(_UNCLOSED):
        try:
            engine.flush()
        except Exception as exc:  # exiting anyway; flush() already logs what it can't write
            log.warning("keystile: could not flush at exit (%s)", type(exc).__name__)


#: ``authenticate(body=...)``: the body, None (too large to compare), or a reader of either.
BodyArgument = bytes | None | Callable[[], Any]


def engine_from(settings: Mapping[str, Any] | None, keystile: Keystile | None) -> Keystile:
    """What a middleware's ``settings=`` / ``keystile=`` arguments mean."""
    if settings is not None and keystile is not None:
        raise TypeError("pass settings or keystile, not both")
    return keystile if keystile is not None else Keystile(settings)


def _as_backend_error(operation: str, exc: Exception) -> BackendError:
    """A failed Redis or store call, to throw back into the steps; anything else is a bug
    (or a refusal) and goes on up."""
    is_store = operation.startswith("store_") and not isinstance(exc, AuthError)
    if isinstance(exc, _REDIS_ERRORS) or is_store:
        return _backend_error(operation, exc)
    raise exc


def _backend_error(operation: str, exc: BaseException) -> BackendError:
    error = BackendError(f"{operation} failed: {type(exc).__name__}")
    error.__cause__ = exc
    return error
