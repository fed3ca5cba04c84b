"""The :class:`Keystile` engine every adapter shares: it composes the backends, the core's
decisions and the services, and runs the life cycle (flushing, shutdown, atexit).

:mod:`keystile._core.verification` and :mod:`keystile._core.admission` say what to do;
:mod:`keystile._runtime.drivers` does the I/O, blocking (:meth:`Keystile.authenticate`) or
without blocking the event loop (:meth:`Keystile.authenticate_async`: argon2 and blocking
store calls go to a thread). The warm path of a known key runs here without a driver.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import re
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import Any

from keystile._backends.backends import Backends, build_backends
from keystile._backends.clocks import Clocks
from keystile._core import tokens
from keystile._core.admission import Admission
from keystile._core.credentialreader import CredentialReader
from keystile._core.credentials import Credentials
from keystile._core.environheaders import EnvironHeaders
from keystile._core.errors import BackendError
from keystile._core.metering import Meter
from keystile._core.networks import Origin
from keystile._core.periods import PeriodPolicy
from keystile._core.principal import Principal
from keystile._core.rawheaders import RawHeaders
from keystile._core.rotation import rotation_headers
from keystile._core.settings import Settings, load_settings
from keystile._core.store import KeyStore
from keystile._core.verification import Snapshot, Verifier
from keystile._core.warmpath import Admitted, MeterCall, RequestInfo
from keystile._redis.clients import pubsub_client
from keystile._redis.eviction import check_eviction_soon
from keystile._redis.invalidation import InvalidationListener
from keystile._runtime.awaitables import DONE
from keystile._runtime.batching import BatchedWrites
from keystile._runtime.closing import Closing
from keystile._runtime.drivers import AsyncDriver, SyncDriver
from keystile._runtime.environment import environment_settings
from keystile._runtime.thresholds import fire_thresholds
from keystile._services.audit import AuditLog
from keystile._services.keys import KeyManager
from keystile._services.loginlimits import FailureLimits
from keystile._services.quotas import QuotaManager, UsageReport
from keystile._services.sessions import SessionManager

log = logging.getLogger("keystile")


class Keystile(Closing):
    """Validated settings, the backends, the verification steps and the managers.

    ``settings``: a dict or :class:`Settings`, used alone; None: the ``KEYSTILE_*`` variables
    over the ``KEYSTILE_CONFIG`` file (:mod:`keystile._runtime.environment`). ``clock`` (the
    wall time, epoch seconds) and ``monotonic``: tests pass their own to move time.
    """

    def __init__(
        self,
        settings: Mapping[str, Any] | Settings | None = None,
        *,
        clock: Callable[[], float] | None = None,
        monotonic: Callable[[], float] | None = None,
        store: KeyStore | None = None,
    ) -> None:
        self.settings = environment_settings() if settings is None else load_settings(settings)
        self.clocks = Clocks(clock or time.time, monotonic or time.monotonic)
        self.backends: Backends = build_backends(self.settings, self.clocks, store)
        backends = self.backends
        # The parts, for adapters, tools and tests.
        self.clock = self.clocks.wall
        self.store: KeyStore = backends.store
        self.hasher = backends.hasher
        self.local = backends.local
        self.redis_keys = backends.redis_keys
        self.has_redis = backends.redis is not None
        #: The Redis gateway (``redis.client`` is the blocking redis-py client), or None.
        self.redis = backends.redis
        self.verifier = Verifier(self.settings, backends.local, self.has_redis)
        if backends.redis is not None:
            self.eviction_check = check_eviction_soon(self.settings)
        self.listener: InvalidationListener | None = None
        if backends.fast:
            assert self.settings.redis_url and backends.redis is not None
            self.listener = InvalidationListener(
                partial(pubsub_client, self.settings),
                backends.redis.channel,
                on_invalidate=backends.local.drop_group,
                on_resync=backends.local.clear,
                timeout=self.settings.redis_timeout,
            )
            self.verifier.listener = self.listener
            self.listener.start()
        self.periods = PeriodPolicy(
            self.settings.billing_anchor_day, self.settings.billing_timezone
        )
        self.admission = Admission(
            self.settings, self.verifier, self.periods, self.clocks.wall, backends.redis_keys,
            self.clocks.monotonic,
        )  # fmt: skip
        #: Failed verifications per key id and client, and each key's known credential.
        self.limits = FailureLimits(backends)
        self.driver = SyncDriver(backends, self.verifier, self.limits)
        self.async_driver = AsyncDriver(backends, self.verifier, self.driver, self.limits)
        self.audit = AuditLog(backends.store, self.clocks.now)
        self.keys = KeyManager(backends, self.audit, self.limits.known)
        self.quotas = QuotaManager(
            backends, self.audit, self.periods, self.admission.limits, self.admission.buffer
        )
        # Late bound: what verifies a login is this engine's verify_with_snapshot, as it is then.
        self.sessions = SessionManager(
            backends,
            self.audit,
            self.keys,
            lambda creds, origin: self.verify_with_snapshot(creds, origin),
            self.limits,
        )
        self.batches = BatchedWrites(backends, self.admission, self.verifier)
        self._background: set[asyncio.Task[Any]] = set()
        self._exempt = set(self.settings.exempt_exact)
        self._exempt_prefixes = self.settings.exempt_prefixes
        self.credentials = CredentialReader(self.settings, backends.digest_key)
        _UNCLOSED.add(self)

    # -- the parts, for adapters, tools and tests -------------------------------------------

    def ready(self, timeout: float = 5.0) -> bool:
        """Fast mode: wait until this process hears every key change (until then it checks
        each request with Redis, as strict mode does). True at once in strict mode."""
        return self.listener is None or self.listener.wait_healthy(timeout)

    def now(self) -> datetime:
        return self.clocks.now()

    def digest(self, token: tokens.ParsedToken) -> str:
        return self.backends.digest(token)

    # -- which paths are authenticated, and which are free ----------------------------------

    def is_exempt(self, path: str) -> bool:
        prefixes = self._exempt_prefixes
        return path in self._exempt or (bool(prefixes) and path.startswith(prefixes))

    def exempt(self, path: str) -> None:
        """Let one more exact path through unauthenticated (the management API's login)."""
        self._exempt.add(path)

    def mount_management(
        self, prefix: str, *, public_paths: Iterable[str], route: re.Pattern[str]
    ) -> None:
        """Where an adapter mounted the management API: its ``public_paths`` skip
        authentication, and its requests (paths ``route`` matches) cost no pages (still
        counted as requests). Mounting a prefix twice is harmless."""
        prefix = prefix.rstrip("/")
        for path in public_paths:
            self.exempt(prefix + path)
        if not self.management_mounted(prefix):
            self.admission.management_mounts += ((prefix, route),)

    def management_mounted(self, prefix: str) -> bool:
        prefix = prefix.rstrip("/")
        return any(mounted == prefix for mounted, _ in self.admission.management_mounts)

    # -- requests ---------------------------------------------------------------------------

    def _warm(
        self, headers: Iterable[tuple[str, str]], method: str, path: str, query: str, body: Any,
        peer: str | None,
    ) -> tuple[Credentials, str, RequestInfo, Admitted | MeterCall | None, float]:  # fmt: skip
        """A request's credential, what the warm path made of it (None: the steps), and when."""
        lazy = (kind := headers.__class__) is RawHeaders or kind is EnvironHeaders or kind is list
        pairs: Sequence[tuple[str, str]] = headers if lazy else list(headers)  # type: ignore
        creds, digest, unseen = self.credentials.read(pairs)
        reader = body if callable(body) else (lambda: body)
        request = RequestInfo(method, path, pairs, query, reader, peer)
        now = self.clock()
        if creds.idempotent:  # a retry is compared with Redis: the steps do that
            return creds, digest, request, None, now
        admitted = self.admission.warm(creds, digest, request, now)
        if admitted is not None and unseen is not None:
            self.credentials.remember(unseen, creds, digest)
        return creds, digest, request, admitted, now

    def _metered(self, call: MeterCall) -> Admitted | None:
        try:
            reply = self.redis.meter(call.keys, call.args)  # type: ignore[union-attr]
        except BackendError as exc:
            return self.admission.meter_failed(call, exc)
        return self.admission.metered(call, reply)

    def authenticate(
        self,
        headers: Iterable[tuple[str, str]],
        method: str = "GET",
        path: str = "/",
        *,
        query: str = "",
        body: BodyArgument = b"",
        peer: str | None = None,
    ) -> Principal:
        """Blocking: the metered principal for these headers, or :class:`AuthError`.

        ``query`` and ``body`` matter only with an ``Idempotency-Key`` header. ``body`` is
        the body, or a callable that reads it, called only once the credential is verified
        (an async one for :meth:`authenticate_async`); ``None``: too large to compare, so the
        request is charged even when its key was seen. ``peer`` is the server's peer address,
        for keys with ``allowed_ips``. Adapters call :meth:`settle` once the response status
        is known.
        """
        creds, digest, request, admitted, now = self._warm(headers, method, path, query, body, peer)
        if admitted.__class__ is MeterCall:
            admitted = self._metered(admitted)
        if admitted is None:
            creds = self.credentials.whole(creds, request.headers)  # the steps may verify it
            admitted = self.driver.run(self.admission.admit(creds, digest, request))
        principal, meter, crossed = admitted  # type: ignore[misc]
        if crossed:
            self._fire_thresholds(meter, crossed)
        self.batches.note_use(meter.charge_info.kid, now)
        return principal

    async def authenticate_async(
        self,
        headers: Iterable[tuple[str, str]],
        method: str = "GET",
        path: str = "/",
        *,
        query: str = "",
        body: BodyArgument = b"",
        peer: str | None = None,
    ) -> Principal:
        """Async: never blocks the event loop."""
        creds, digest, request, admitted, now = self._warm(headers, method, path, query, body, peer)
        if admitted.__class__ is MeterCall:  # (_metered's, inline: one frame less to resume)
            call: MeterCall = admitted
            try:
                reply = await self.redis.meter_async(call.keys, call.args)  # type: ignore[union-attr]
            except BackendError as exc:
                admitted = self.admission.meter_failed(call, exc)
            else:
                admitted = self.admission.metered(call, reply)
        if admitted is None:
            creds = self.credentials.whole(creds, request.headers)  # the steps may verify it
            admitted = await self.async_driver.run(self.admission.admit(creds, digest, request))
        principal, meter, crossed = admitted  # type: ignore[misc]
        if crossed:
            self._spawn(asyncio.to_thread(self._fire_thresholds, meter, crossed))
        self.batches.note_use(meter.charge_info.kid, now)
        return principal

    def verify(self, creds: Credentials) -> Principal:
        """Blocking: check a credential without metering it."""
        return self.verify_with_snapshot(creds)[0]

    def verify_with_snapshot(
        self, creds: Credentials, origin: Origin | None = None
    ) -> tuple[Principal, Snapshot]:
        """:meth:`verify`, with what it read of the key (its version; a grace secret's end).
        ``origin``: where the request came from, for a key with an allowlist."""
        verified: tuple[Principal, Snapshot] = self.driver.run(
            self.admission.verify(creds, self.digest(creds.token), origin)
        )
        return verified

    def settle(self, principal: Principal | None, status_code: int | None) -> None:
        """After the response: charge the real cost, or refund (status not counted, or None
        for an unhandled exception). Costs no I/O when the reservation was right."""
        meter = None if principal is None else principal.meter
        call = None if meter is None else self.admission.settle_call(meter, status_code)
        if call is not None:
            try:
                self.redis.settle(call[1], call[2])  # type: ignore[union-attr]
            except BackendError:
                self.admission.settle_failed(*call)

    def settle_async(self, principal: Principal | None, status_code: int | None) -> Awaitable[None]:
        meter = None if principal is None else principal.meter
        call = None if meter is None else self.admission.settle_call(meter, status_code)
        return DONE if call is None else self._settle_async(call)  # (most: no call, no coroutine)

    async def _settle_async(self, call: tuple[Any, ...]) -> None:
        try:
            await self.redis.settle_async(call[1], call[2])  # type: ignore[union-attr]
        except BackendError:
            self.admission.settle_failed(*call)

    def reserve(self, principal: Principal, pages: int) -> None:
        """Raise the request's reservation to a route's declared cost (BILLING_001 if over)."""
        if principal.meter is not None:
            crossed = self.driver.run(self.admission.reserve(principal.meter, pages))
            if crossed:
                self._fire_thresholds(principal.meter, crossed)

    async def reserve_async(self, principal: Principal, pages: int) -> None:
        if principal.meter is not None:
            crossed = await self.async_driver.run(self.admission.reserve(principal.meter, pages))
            if crossed:
                self._spawn(asyncio.to_thread(self._fire_thresholds, principal.meter, crossed))

    def usage(
        self, account_id: str, month: str | None = None, environment: str | None = None
    ) -> UsageReport:
        """An account's usage for ``month`` ("YYYY-MM"; default: this period), per key, with
        the 12 months up to it. Same as ``ks.quotas.usage``."""
        return self.quotas.usage(account_id, month, environment)

    def response_headers(self, principal: Principal | None) -> list[tuple[str, str]]:
        """What an admitted request's response carries: the RateLimit fields of a metered
        one, and the rotation signals of a rolled key's old secret (often none at all)."""
        if principal is None:
            return []
        meter = principal.meter
        if meter is None or (meter.limit is None and not meter.rates):
            headers = []  # (most requests: no call)
        else:
            headers = self.admission.headers(meter)
        if principal.previous_secret_expires_at is not None:
            headers.extend(rotation_headers(principal.previous_secret_expires_at))
        return headers

    def _fire_thresholds(self, meter: Meter, crossed: tuple[float, ...]) -> None:
        fire_thresholds(self.settings.on_quota_threshold, meter, crossed)

    def flush(self) -> None:
        """Write batched last-use times and usage to the store; send Redis again the counter
        changes it did not confirm."""
        self.batches.flush()

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- lifecycle --------------------------------------------------------------------------

    async def shutdown_async(self) -> None:
        """The ASGI app is stopping (lifespan shutdown): write what is batched and let go of
        this event loop's Redis connections. The engine stays usable."""
        await asyncio.to_thread(self.flush)
        if self.redis is not None:
            await self.redis.aclose()

    def close(self) -> None:
        """Write what is batched; let go of the threads, Redis and the store (once)."""
        if self._closed:
            return
        self._closed = True
        _UNCLOSED.discard(self)
        if self.listener is not None:
            self.listener.stop()
        self.batches.stop()
        self.flush()
        key_ids = self.backends.key_ids
        if key_ids is not None:
            key_ids.wait_for_seeder(5 * self.settings.redis_timeout + 1.0)
        if self.redis is not None:
            self.redis.close()
        self.store.close()

    async def aclose(self) -> None:
        """:meth:`shutdown_async`, and the threads stopped; :meth:`close` lets go of the rest."""
        if self._closed:
            return
        _UNCLOSED.discard(self)
        if self.listener is not None:
            await asyncio.to_thread(self.listener.stop)
        self.batches.stop()
        await asyncio.to_thread(self.flush)
        if self.redis is not None:
            await self.redis.aclose()

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
