"""One request from headers to a metered principal, and its settlement after the response.

The common request takes :meth:`Admission.warm` (:mod:`keystile._core.warmpath`): plain
calls, no I/O, or one meter call that the engine makes and hands back. Everything else takes
:meth:`Admission.admit`, steps that yield their I/O for the engine to perform, like
:mod:`keystile._core.verification`. In strict mode a credential this process knows costs exactly
one Redis call (the meter script checks the key's state stamp and charges the quota at
once); in fast mode none, its pages spent from a lease (:mod:`keystile._core.leases`).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from typing import Any

from keystile._core.credentials import IDEMPOTENCY_HEADER, Credentials
from keystile._core.errors import BACKEND_UNAVAILABLE, AuthError
from keystile._core.leases import LeaseBook
from keystile._core.localcache import LocalCache
from keystile._core.localcounters import LocalCounters
from keystile._core.metercalls import MeterCalls
from keystile._core.metering import (
    Charge,
    UsageBuffer,
    basis_points,
    idempotency_digest,
    thresholds_by_points,
)
from keystile._core.networks import Origin
from keystile._core.periods import Period, PeriodPolicy
from keystile._core.rateleases import RateBook
from keystile._core.ratelimitfields import MonthlyPolicies
from keystile._core.rediskeys import RedisKeys
from keystile._core.resends import CallIds, Resends
from keystile._core.settings import Settings
from keystile._core.store import AccountLimit
from keystile._core.verification import SessionIdle, Steps, Verifier
from keystile._core.warmpath import RequestInfo, WarmPath
from keystile._core.warmtickets import WarmTickets

log = logging.getLogger("keystile")


_UNREAD = object()  # the body has not been read (yet)


#: Seconds: the least time a lease lives in Redis after its last grant or report.
LEASE_TTL_FLOOR = 30.0


class Admission(WarmPath):
    def __init__(
        self,
        settings: Settings,
        verifier: Verifier,
        periods: PeriodPolicy,
        clock: Callable[[], float],
        keys: RedisKeys,
        monotonic: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.verifier = verifier
        self.periods = periods
        self.clock = clock
        self.keys = keys
        self.has_redis = verifier.has_redis
        self.buffer = UsageBuffer()
        self.counters = LocalCounters(self.buffer)
        #: Counter changes Redis did not confirm: sent again, safely, until it does.
        self.resends = Resends()
        self.call_ids = CallIds()
        self.gens: dict[tuple[str, str, str], str] = {}
        self.rate_book = RateBook()
        self.monthly = MonthlyPolicies()
        self.monotonic = monotonic  # the clock of both in-process caches
        self.limits: LocalCache[AccountLimit | None] = LocalCache(10_000, monotonic)
        self._period: tuple[Period, float, float] | None = None
        #: Where the management API is mounted, with the pattern of its routes: they cost no
        #: pages there (an app's own routes under the same prefix still do).
        self.management_mounts: tuple[tuple[str, re.Pattern[str]], ...] = ()
        self.counted = frozenset(settings.counted_statuses)
        self.by_points = thresholds_by_points(settings.quota_thresholds)
        # The meter script's arguments that never change.
        self._script_tail = (
            ",".join(str(basis_points(t)) for t in settings.quota_thresholds),
            settings.idempotency_ttl,
            settings.cache_ttl,
        )
        #: Charges of warm requests, reused: the same key, account, period and cost make the
        #: same (immutable) charge.
        self._charges: dict[tuple[Any, ...], Charge] = {}
        #: What the warm requests of a remembered credential reuse (warmtickets).
        self.tickets = WarmTickets(settings.local_cache_size)
        #: Fast mode: pages leased from Redis counters, spent here without a round trip.
        self.leases = LeaseBook(buffer=self.buffer) if settings.consistency == "fast" else None
        self.holder = self.call_ids.prefix if self.has_redis and self.leases is None else ""
        self.meter_calls = MeterCalls(
            keys, self.call_ids, self.holder, self._script_tail, settings.local_cache_size
        )
        #: A crashed process's lease is forgiven this long after its last report. A live one's
        #: must outlast any slow flush (its reports held up by Redis timeouts or the store):
        #: forgiven while it is spent, its pages would be spent twice.
        self.lease_ttl_ms = int(max(LEASE_TTL_FLOOR, 3 * settings.usage_flush_interval) * 1000)

    # -- the general path ---------------------------------------------------------------------

    def admit(self, creds: Credentials, digest: str, request: RequestInfo) -> Steps:
        """:data:`Admitted`, or AuthError."""
        snapshot, checked = yield from self.verifier.lookup(creds.token, digest)
        idle_rechecked = False
        body_digest: object = _UNREAD
        for _ in range(3):
            now = self.clock()
            try:
                account = self.verifier.check(
                    snapshot, creds.account_id, now, creds.token.environment, request
                )
            except SessionIdle:
                if idle_rechecked:
                    raise
                # Other processes write their uses of the session to the store: read it.
                snapshot = yield from self.verifier.refresh(creds.token, digest, snapshot)
                checked = idle_rechecked = True
                continue
            except AuthError:
                # A refusal from a snapshot not yet compared may be out of date (expiry moved).
                if checked or (yield from self.verifier.is_current(snapshot)):
                    raise
                snapshot = yield from self.verifier.refresh(creds.token, digest, snapshot)
                checked = True
                continue
            if not checked and account != snapshot.account_id:
                # Acting for another account: its counters live in another Redis slot.
                if not (yield from self.verifier.is_current(snapshot)):
                    snapshot = yield from self.verifier.refresh(creds.token, digest, snapshot)
                    checked = True
                    continue
                checked = True
            idempotency_key = request.header(IDEMPOTENCY_HEADER)
            if idempotency_key and body_digest is _UNREAD:
                # Only now, for a verified key: nobody else makes keystile read a body.
                body = yield ("request_body", (request.body_reader,))
                body_digest = None if body is None else hashlib.sha256(body).hexdigest()
            charge = Charge(
                account_id=account,
                environment=snapshot.environment,
                kid=snapshot.kid,
                key_limit=snapshot.page_limit,
                rate=snapshot.rate,
                period=self.period_at(now),
                cost=self.cost_of(request),
                idempotency=idempotency_digest(
                    account,
                    snapshot.environment,
                    request.method,
                    request.path,
                    request.query,
                    body_digest if isinstance(body_digest, str) else None,
                    idempotency_key,
                ),
            )
            outcome = yield from self.meter(charge, None if checked else snapshot)
            if outcome.result == "stale":
                snapshot = yield from self.verifier.refresh(creds.token, digest, snapshot)
                checked = True
                continue
            return self.admitted(snapshot, account, creds.auth_method, charge, outcome, now)
        raise AuthError(BACKEND_UNAVAILABLE, "API key is changing; retry shortly.")

    def verify(self, creds: Credentials, digest: str, origin: Origin | None = None) -> Steps:
        """The principal for a credential, state and account checked, and the snapshot it
        came from, without metering (a login costs no pages)."""
        snapshot, checked = yield from self.verifier.lookup(creds.token, digest)
        if not checked and not (yield from self.verifier.is_current(snapshot)):
            snapshot = yield from self.verifier.refresh(creds.token, digest, snapshot)
        principal = self.verifier.authorize(
            snapshot,
            creds.auth_method,
            creds.account_id,
            self.clock(),
            creds.token.environment,
            origin,
        )
        return principal, snapshot
