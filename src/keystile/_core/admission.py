"""One request from headers to a metered principal, and its settlement after the response.

The common request takes :meth:`Admission.warm`: plain calls, no I/O, or one meter call that
the engine makes and hands back (:class:`MeterCall`). Everything else takes
:meth:`Admission.admit`, steps that yield their I/O for the engine to perform, like
:mod:`keystile._core.verification`. In strict mode a credential this process knows costs exactly
one Redis call (the meter script checks the key's state stamp and charges the quota at
once); in fast mode none, its pages spent from a lease (:mod:`keystile._core.leases`).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any, NamedTuple

from keystile._core.charging import NO_ROW, resolve_limit
from keystile._core.credentials import IDEMPOTENCY_HEADER, Credentials
from keystile._core.errors import BACKEND_UNAVAILABLE, AuthError, BackendError, InvalidInput
from keystile._core.leases import LeaseBook
from keystile._core.localcache import LocalCache
from keystile._core.localcounters import LocalCounters
from keystile._core.metercalls import MeterCalls
from keystile._core.metering import (
    Charge,
    Meter,
    Outcome,
    UsageBuffer,
    basis_points,
    exceeded_error,
    idempotency_digest,
    parse_script_reply,
    thresholds_by_points,
)
from keystile._core.networks import Origin
from keystile._core.periods import Period, PeriodPolicy
from keystile._core.principal import Principal
from keystile._core.rateleases import RateBook
from keystile._core.ratelimitfields import MonthlyPolicies
from keystile._core.ratelimits import parse_rate, rate_limited
from keystile._core.rediskeys import RedisKeys
from keystile._core.resends import CallIds, Resends
from keystile._core.settings import Settings
from keystile._core.settlement import Settlement
from keystile._core.store import AccountLimit
from keystile._core.verification import SessionIdle, Snapshot, Steps, Verifier, principal_of

log = logging.getLogger("keystile")


_UNREAD = object()  # the body has not been read (yet)


#: Seconds: the least time a lease lives in Redis after its last grant or report.
LEASE_TTL_FLOOR = 30.0


class RequestInfo:
    """What a ``page_cost`` callable sees of a request (read-only by convention: a plain
    class, since every request makes one and a frozen dataclass costs three times more)."""

    __slots__ = ("body_reader", "headers", "method", "path", "peer", "query")

    def __init__(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]],
        query: str = "",
        body_reader: Callable[[], Any] | None = None,
        peer: str | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.query = query
        #: The server's peer address (a proxy's, behind one: see ``trusted_proxies``).
        self.peer = peer
        #: Reads the body for an Idempotency-Key, called only once the credential is
        #: verified: bytes, or None when too large to compare (an awaitable under ASGI).
        self.body_reader: Callable[[], Any] = body_reader or _no_body

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    def __repr__(self) -> str:
        return f"RequestInfo(method={self.method!r}, path={self.path!r}, query={self.query!r})"


def _no_body() -> bytes:
    return b""


class MeterCall(NamedTuple):
    """A warm request waiting for its one Redis call (``meter.lua``): what to send, and what
    to build the principal from once the answer is back."""

    digest: str
    snapshot: Snapshot
    account: str
    auth_method: str
    charge: Charge
    now: float
    keys: list[str]
    args: list[Any]


#: What admission hands back: the principal, its meter, and the thresholds it crossed.
Admitted = tuple[Principal, Meter, tuple[float, ...]]


class Admission(Settlement):
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

    def period_at(self, now: float) -> Period:
        # Computing a period costs tens of µs (zone maths); it changes once a month.
        cached = self._period
        if cached is None or not cached[1] <= now < cached[2]:
            period = self.periods.period_at(datetime.fromtimestamp(now, timezone.utc))
            cached = self._period = (period, period.start.timestamp(), period.end.timestamp())
        return cached[0]

    def is_management(self, path: str) -> bool:
        """A route of the management API under one of its mount prefixes: free of pages."""
        for prefix, route in self.management_mounts:
            rest = path[len(prefix) :].rstrip("/")
            if path.startswith(prefix + "/") and route.fullmatch(rest):
                return True
        return False

    def cost_of(self, request: RequestInfo) -> int:
        if self.management_mounts and self.is_management(request.path):
            return 0
        cost = self.settings.page_cost
        if callable(cost):
            value = cost(request)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidInput("page_cost", f"the callable returned {value!r}, not an int >= 0")
            return value
        return cost

    # -- the warm path: a credential this process holds, no generators --------------------------

    def warm(
        self, creds: Credentials, digest: str, request: RequestInfo, now: float
    ) -> Admitted | MeterCall | None:
        """The common request, decided without I/O or with one meter call: the credential is
        in this process's cache, and carries no Idempotency-Key. None: take :meth:`admit`."""
        cached_at = self.monotonic()  # one read for both caches
        snapshot = self.verifier.local.get(digest, cached_at)
        if not isinstance(snapshot, Snapshot):
            return None
        if snapshot.session_id is not None:
            return None
        checked = not self.has_redis or self.verifier.trusts_local()
        try:
            account = self.verifier.check(
                snapshot, creds.account_id, now, creds.token.environment, request
            )
        except AuthError:
            if checked:
                raise
            return None  # the snapshot may be out of date: admit() compares it first
        if not checked and account != snapshot.account_id:
            return None  # another account's counters live in another slot: admit() checks
        cost = self.settings.page_cost  # (the common cost inline: every request takes this)
        if cost.__class__ is not int or self.management_mounts:
            cost = self.cost_of(request)
        cached = self._period  # (period_at's, inline while the month lasts)
        if cached is not None and cached[1] <= now < cached[2]:
            period = cached[0]
        else:
            period = self.period_at(now)
        charge = self._charge(snapshot, account, period, cost)
        if self.has_redis:
            if checked and self.leases is not None and charge.fits_lease:
                outcome = self._spend_lease(charge, now)
                if outcome is None:
                    return None  # the lease is short: admit() takes a new one
                return self.admitted(snapshot, account, creds.auth_method, charge, outcome, now)
            keys, args = self.meter_call(charge, None if checked else snapshot, "", "", now)
            return MeterCall(digest, snapshot, account, creds.auth_method, charge, now, keys, args)
        row = self.limits.get(account, cached_at)
        if row is None:
            return None  # admit() reads the limit from the store
        row = None if row is NO_ROW else row
        outcome = self.counters.meter(
            charge,
            resolve_limit(self.settings, row, charge.environment),
            self.settings.quota_thresholds,
            now,
            self.settings.idempotency_ttl,
            None if row is None or row.rate is None else parse_rate(row.rate),
        )  # (which adds it to the buffer)
        if outcome is None:
            return None  # admit() reads the usage from the store
        return self.admitted(snapshot, account, creds.auth_method, charge, outcome, now)

    def metered(self, call: MeterCall, reply: Sequence[Any]) -> Admitted | None:
        """The warm request's meter answer; None when it needs more (stale, a seed): admit()."""
        outcome = parse_script_reply(reply, self.by_points)
        if not isinstance(outcome, Outcome):
            if outcome == "stale":
                self.verifier.forget(call.digest, call.snapshot)
            return None
        self._record(call.charge, outcome)
        return self.admitted(
            call.snapshot, call.account, call.auth_method, call.charge, outcome, call.now
        )

    def meter_failed(self, call: MeterCall, error: BackendError) -> Admitted:
        """The warm request's meter call failed: the one Redis error policy (refuse or go on)."""
        outcome = self._redis_failed(call.charge, error, call.keys)
        return self.admitted(
            call.snapshot, call.account, call.auth_method, call.charge, outcome, call.now
        )

    def _charge(self, snapshot: Snapshot, account: str, period: Period, cost: int) -> Charge:
        key = (snapshot.kid, account, period.label, cost, snapshot.page_limit, snapshot.rate)
        charge = self._charges.get(key)
        if charge is None:
            if len(self._charges) >= 10_000:
                self._charges.clear()
            charge = self._charges[key] = Charge(
                account,
                snapshot.environment,
                snapshot.kid,
                snapshot.page_limit,
                period,
                cost,
                None,
                rate=snapshot.rate,
            )
        return charge

    def admitted(
        self,
        snapshot: Snapshot,
        account: str,
        auth_method: str,
        charge: Charge,
        outcome: Outcome,
        now: float,
    ) -> Admitted:
        """The principal for a metered outcome, or the quota refusal."""
        result = outcome.result
        reserved = charge.cost if result == "ok" or result == "degraded" else 0
        meter = Meter(
            charge,
            outcome.limit,
            outcome.used,
            reserved,
            result == "replay",
            outcome.leased,
            outcome.rates,
        )
        if result == "exceeded":
            raise exceeded_error(outcome, meter.status, self.headers(meter), now)
        if result == "rate_limited":
            raise rate_limited(outcome.rates[0], self.headers(meter))
        return principal_of(snapshot, account, auth_method, meter), meter, outcome.crossed

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
