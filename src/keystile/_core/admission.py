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
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from keystile._core.credentials import IDEMPOTENCY_HEADER, Credentials
from keystile._core.errors import BACKEND_UNAVAILABLE, AuthError, BackendError, InvalidInput
from keystile._core.leases import LeaseBook, LeaseReport, report_args
from keystile._core.localcache import LocalCache
from keystile._core.metering import (
    USAGE_GRACE_SECONDS,
    Charge,
    LocalCounters,
    Meter,
    Outcome,
    QuotaStatus,
    UsageBuffer,
    basis_points,
    encode_rebuild,
    exceeded_error,
    idempotency_digest,
    parse_script_reply,
    rebuild_fields,
    thresholds_by_points,
)
from keystile._core.periods import Period, PeriodPolicy
from keystile._core.principal import Principal
from keystile._core.rediskeys import RedisKeys
from keystile._core.settings import Settings
from keystile._core.store import AccountLimit
from keystile._core.verification import SessionIdle, Snapshot, Steps, Verifier, principal_of

log = logging.getLogger("keystile")
_NO_ROW: Any = object()


_UNREAD = object()  # the body has not been read (yet)
_OK = Outcome("ok")
#: A lease takes at most 1/8 of what is left under the limit: near it, single pages.
LEASE_SPREAD = 8

class RequestInfo:
    """What a ``page_cost`` callable sees of a request (read-only by convention: a plain
    class, since every request makes one and a frozen dataclass costs three times more)."""

    __slots__ = ("body_reader", "headers", "method", "path", "query")

    def __init__(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]],
        query: str = "",
        body_reader: Callable[[], Any] | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.query = query
        #: Reads the body for an Idempotency-Key, called only once the credential is
        #: verified: bytes, or None when too large to compare (an awaitable under ASGI).
        self.body_reader: Callable[[], Any] = body_reader or _no_body

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    def __repr__(self) -> str:
        return f"RequestInfo(method={self.method!r}, path={self.path!r}, query={self.query!r})"


def _no_body() -> bytes:
    return b""


def resolve_limit(settings: Settings, row: AccountLimit | None, environment: str) -> int | None:
    if environment != settings.environments[0]:
        return settings.test_page_limit  # test keys never touch the live allowance
    if row is None:
        return settings.monthly_page_limit
    if row.plan is not None:
        return settings.plans.get(row.plan, settings.monthly_page_limit)
    return row.pages


class MeterCall:
    """A warm request waiting for its one Redis call (``meter.lua``): what to send, and what
    to build the principal from once the answer is back."""

    __slots__ = ("account", "args", "auth_method", "charge", "digest", "keys", "now", "snapshot")

    def __init__(
        self,
        digest: str,
        snapshot: Snapshot,
        account: str,
        auth_method: str,
        charge: Charge,
        now: float,
        keys: list[str],
        args: list[Any],
    ) -> None:
        self.digest = digest
        self.snapshot = snapshot
        self.account = account
        self.auth_method = auth_method
        self.charge = charge
        self.now = now
        self.keys = keys
        self.args = args


#: What admission hands back: the principal, its meter, and the thresholds it crossed.
Admitted = tuple[Principal, Meter, tuple[float, ...]]


class Admission:
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
        self.counters = LocalCounters()
        self.buffer = UsageBuffer()
        #: Redis counters a failed call may or may not have changed (a timeout hides which):
        #: never retried blindly, they are rebuilt from the store once Redis answers again.
        self.uncertain = UncertainCounters()
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
        self._charges: dict[tuple[str, str, str, int, int | None], Charge] = {}
        #: Fast mode: pages leased from Redis counters, spent here without a round trip.
        self.leases = LeaseBook() if settings.consistency == "fast" else None
        #: A crashed process's lease is forgiven this long after its last report.
        self.lease_ttl_ms = int(max(1.0, 3 * settings.usage_flush_interval) * 1000)

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
        snapshot = self.verifier.local.get(digest)
        if snapshot.__class__ is not Snapshot:
            return None
        assert isinstance(snapshot, Snapshot)
        if snapshot.session_id is not None:
            return None
        checked = not self.has_redis or self.verifier.trusts_local()
        try:
            account = self.verifier.check(snapshot, creds.account_id, now, creds.token.environment)
        except AuthError:
            if checked:
                raise
            return None  # the snapshot may be out of date: admit() compares it first
        if not checked and account != snapshot.account_id:
            return None  # another account's counters live in another slot: admit() checks
        charge = self._charge(snapshot, account, self.period_at(now), self.cost_of(request))
        if self.has_redis:
            if checked and self.leases is not None and charge.key_limit is None:
                outcome = self._spend_lease(charge)
                if outcome is None:
                    return None  # the lease is short: admit() takes a new one
                return self.admitted(snapshot, account, creds.auth_method, charge, outcome, now)
            keys, args = self.meter_call(charge, None if checked else snapshot, "", "", now)
            return MeterCall(digest, snapshot, account, creds.auth_method, charge, now, keys, args)
        row = self.limits.get(account)
        if row is None or not self.counters.has(charge.counter):
            return None  # admit() reads the limit or the usage from the store
        limit = resolve_limit(self.settings, None if row is _NO_ROW else row, charge.environment)
        outcome = self.counters.meter(
            charge, limit, self.settings.quota_thresholds, now, self.settings.idempotency_ttl
        )
        self._record(charge, outcome)
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
        outcome = self._redis_failed(call.charge, error)
        return self.admitted(
            call.snapshot, call.account, call.auth_method, call.charge, outcome, call.now
        )

    def _charge(self, snapshot: Snapshot, account: str, period: Period, cost: int) -> Charge:
        key = (snapshot.kid, account, period.label, cost, snapshot.page_limit)
        charge = self._charges.get(key)
        if charge is None:
            if len(self._charges) >= 10_000:
                self._charges.clear()
            charge = self._charges[key] = Charge(
                account, snapshot.environment, snapshot.kid, snapshot.page_limit, period, cost, None
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
            charge, outcome.limit, outcome.used, reserved, result == "replay", outcome.leased
        )
        if result == "exceeded":
            raise exceeded_error(outcome, meter.status, self.headers(meter), now)
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
                    snapshot, creds.account_id, now, creds.token.environment
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

    def verify(self, creds: Credentials, digest: str) -> Steps:
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
        )
        return principal, snapshot

    def headers(self, meter: Meter) -> list[tuple[str, str]]:
        if meter.limit is None:
            return []
        period = meter.charge_info.period
        window = int((period.end - period.start).total_seconds())
        return meter.status.headers(self.clock(), window)

    def meter_call(
        self, charge: Charge, unchecked: Snapshot | None, seed: str, rebuild: str, now: float
    ) -> tuple[list[str], list[Any]]:
        """``meter.lua``'s keys and arguments; ``unchecked``: a snapshot whose state stamp to
        compare in the same call."""
        keys = self.keys
        account = charge.account_id
        usage = keys.usage(account, charge.period.label, charge.environment)
        idem = keys.idempotency(account, charge.idempotency) if charge.idempotency else usage
        state = keys.state(unchecked.account_id, unchecked.kid) if unchecked else usage
        thresholds, idem_ttl, limit_ttl = self._script_tail
        args: list[Any] = [
            charge.kid,
            charge.cost,
            unchecked.version if unchecked else "",
            "" if charge.key_limit is None else charge.key_limit,
            seed,
            rebuild,
            int(charge.period.end.timestamp() - now) + USAGE_GRACE_SECONDS,
            thresholds,
            idem_ttl,
            limit_ttl,
            "1" if charge.idempotency else "0",
            "1" if charge.count_request else "0",
        ]
        return [usage, keys.limit(account, charge.environment), idem, state], args

    def meter(self, charge: Charge, unchecked: Snapshot | None, lease: bool = True) -> Steps:
        """Check and charge; ``unchecked`` is a snapshot whose stamp to compare at once.
        ``lease``: in fast mode, may be spent from a lease (not when the request's first
        pages were charged in Redis directly: a refund must go back where they came from)."""
        if (
            lease
            and self.leases is not None
            and unchecked is None
            and charge.idempotency is None
            and charge.key_limit is None
        ):
            return (yield from self._lease_meter(charge))
        if not self.has_redis:
            limit = yield from self._limit(charge.account_id, charge.environment)
            if not self.counters.has(charge.counter):
                rows = yield from self._store_usage(charge)
                self.counters.seed(
                    charge.account_id,
                    charge.period.label,
                    charge.environment,
                    rows,
                    limit,
                    self.settings.quota_thresholds,
                )
            outcome = self.counters.meter(
                charge,
                limit,
                self.settings.quota_thresholds,
                self.clock(),
                self.settings.idempotency_ttl,
            )
            self._record(charge, outcome)
            return outcome
        seed, rebuild = "", ""
        for _ in range(3):
            keys, args = self.meter_call(charge, unchecked, seed, rebuild, self.clock())
            try:
                reply = yield ("redis_meter", (keys, args))
            except BackendError as exc:
                return self._redis_failed(charge, exc)
            parsed = parse_script_reply(reply, self.by_points)
            if parsed == "need_limit":
                limit = yield from self._limit(charge.account_id, charge.environment)
                seed = "none" if limit is None else str(limit)
            elif parsed == "need_usage":
                rebuild = encode_rebuild((yield from self._store_usage(charge)))
                # The rebuilt counter holds every charge this process recorded, including
                # those admitted while Redis was down: nothing left to reconcile.
                self.uncertain.discard(charge)
            elif isinstance(parsed, Outcome):
                self._record(charge, parsed)
                return parsed
            else:
                return Outcome("stale")
        raise AuthError(BACKEND_UNAVAILABLE)

    def _spend_lease(self, charge: Charge) -> Outcome | None:
        """Fast mode: the charge out of this process's lease, or None when it is short."""
        assert self.leases is not None
        counter = charge.counter
        if self.leases.spend(counter, charge.kid, charge.cost, charge.count_request) is None:
            return None
        self._record(charge, _OK)
        used, limit = self.leases.view(counter)
        return Outcome("ok", used, limit, leased=True)

    def _lease_meter(self, charge: Charge) -> Steps:
        """Fast mode: spend from the lease; when it is short, take a block from the Redis
        counter (``lease.lua``), which never leases past the limit."""
        assert self.leases is not None
        leases = self.leases
        outcome = self._spend_lease(charge)
        if outcome is not None:
            return outcome
        counter = charge.counter
        keys = self.keys
        names = [
            keys.usage(*counter),
            keys.limit(charge.account_id, charge.environment),
            keys.leases(*counter),
        ]
        seed, rebuild = "", ""
        for _ in range(4):
            args = [
                leases.holder,
                leases.want(counter, charge.cost),
                seed,
                rebuild,
                int(charge.period.end.timestamp() - self.clock()) + USAGE_GRACE_SECONDS,
                self.settings.cache_ttl,
                self.lease_ttl_ms,
                self._script_tail[0],
                LEASE_SPREAD,
                leases.need(counter, charge.cost),
            ]
            try:
                reply = yield ("redis_lease", (names, args))
            except BackendError as exc:
                return self._redis_failed(charge, exc)
            kind = reply[0]
            if kind == "need_limit":
                limit = yield from self._limit(charge.account_id, charge.environment)
                seed = "none" if limit is None else str(limit)
            elif kind == "need_usage":
                rebuild = encode_rebuild((yield from self._store_usage(charge)))
                self.uncertain.discard(charge)
            elif kind == "exceeded":
                limit = None if int(reply[2]) < 0 else int(reply[2])
                return Outcome("exceeded", int(reply[1]), limit)
            else:
                limit = None if int(reply[3]) < 0 else int(reply[3])
                leases.grant(counter, int(reply[1]), int(reply[2]), limit, int(reply[5]))
                outcome = self._spend_lease(charge)
                if outcome is not None:
                    marks = str(reply[4])
                    if marks:
                        crossed = tuple(self.by_points[int(t)] for t in marks.split(","))
                        outcome = replace(outcome, crossed=crossed)
                    return outcome
                seed, rebuild = "", ""  # concurrent requests spent the block first: again
        raise AuthError(BACKEND_UNAVAILABLE)

    def lease_reports(self, *, keep: bool) -> list[tuple[LeaseReport, list[str], list[Any]]]:
        """Fast mode, at flush and shutdown: what to tell Redis of the leases (spent pages,
        requests, unused pages given back), as ``lease_report.lua`` calls."""
        if self.leases is None:
            return []
        holder = self.leases.holder
        return [
            (
                report,
                [self.keys.usage(*report.counter), self.keys.leases(*report.counter)],
                report_args(report, holder, self.lease_ttl_ms),
            )
            for report in self.leases.reports(keep=keep)
        ]

    def lease_reported(self, report: LeaseReport, reply: Sequence[Any]) -> None:
        assert self.leases is not None
        if reply[0] == "lost":
            self.leases.forget(report.counter, report.gen)
        elif len(reply) > 2 and int(reply[2]) == 0:
            self.leases.revoke(report.counter)  # presumed dead and swept: stop spending it

    def _redis_failed(self, charge: Charge, error: BackendError) -> Outcome:
        """A meter call failed: its counter is uncertain; refuse or go on (the policy)."""
        self.uncertain.add(charge)
        self.verifier.backend_down(error)
        return self._degraded(charge)

    def _store_usage(self, charge: Charge) -> Steps:
        try:
            rows = yield ("store_usage", (charge.account_id, (charge.period.label,)))
        except BackendError:
            raise AuthError(BACKEND_UNAVAILABLE) from None
        mine = [r for r in rows if r.environment == charge.environment]
        pending = self.buffer.pending(charge.account_id, charge.period.label, charge.environment)
        return rebuild_fields(mine, pending)

    def _limit(self, account_id: str, environment: str) -> Steps:
        # With Redis the limit is cached there and dropped on every change; a copy here would
        # write a stale limit back. Without Redis this process's copy is the cache.
        row = None if self.has_redis else self.limits.get(account_id)
        if row is None:
            try:
                row = yield ("store_get_limit", (account_id,))
            except BackendError:
                raise AuthError(BACKEND_UNAVAILABLE) from None
            if not self.has_redis:
                self.limits.put(
                    account_id, account_id, row or _NO_ROW, self.settings.local_cache_ttl
                )
        return resolve_limit(self.settings, None if row is _NO_ROW else row, environment)

    def _record(self, charge: Charge, outcome: Outcome) -> None:
        if outcome.result == "ok":
            self.buffer.add(charge, charge.cost, 1 if charge.count_request else 0)

    def _degraded(self, charge: Charge) -> Outcome:
        """Redis is down and the policy admits: the store records the charge."""
        self.buffer.add(charge, charge.cost, 1 if charge.count_request else 0)
        return Outcome("degraded")

    # -- after the response ---------------------------------------------------------------------

    def settle_call(self, meter: Meter, status_code: int | None) -> tuple[Any, ...] | None:
        """Charge the real cost (or refund) once the response is known: what to tell Redis,
        None when nothing (the reservation was right, or no Redis)."""
        if meter.settled:
            return None
        meter.settled = True
        counted = status_code is not None and status_code in self.counted
        if counted and meter.final is None:
            return None  # the common case: the reservation was the cost
        delta = meter.delta(status_code, self.counted)
        charge = meter.charge_info
        forget = not counted and charge.idempotency is not None and not meter.replay
        if not delta and not forget:
            return None
        self.buffer.add(charge, delta, 0)
        if meter.leased:
            assert self.leases is not None
            if delta < 0:  # a refund goes back into the lease, for the next request
                self.leases.refund(charge.counter, charge.kid, -delta)
            else:
                self.leases.overage(charge.counter, charge.kid, delta)
            return None
        if not self.has_redis:
            self.counters.settle(charge, delta, forget)
            return None
        keys = self.keys
        usage = keys.usage(charge.account_id, charge.period.label, charge.environment)
        idem = usage
        if forget and charge.idempotency:
            idem = keys.idempotency(charge.account_id, charge.idempotency)
        return charge, [usage, idem], [charge.kid, delta, "1" if forget else "0"]

    def settle_failed(self, charge: Charge) -> None:
        # Never retried blindly: the store has the delta, and Redis's counter is rebuilt
        # from the store once it answers again.
        self.uncertain.add(charge)

    def settle(self, meter: Meter, status_code: int | None) -> Steps:
        call = self.settle_call(meter, status_code)
        if call is not None:
            try:
                yield ("redis_settle", (call[1], call[2]))
            except BackendError:
                self.settle_failed(call[0])
        return None

    def reserve(self, meter: Meter, pages: int) -> Steps:
        """Raise this request's reservation to ``pages`` (a route that costs more).

        A cheaper route (``cost(0)`` under a ``page_cost`` of 1) makes its cost the real one,
        so settling refunds the difference; ``principal.charge()`` still has the last word.
        Returns the thresholds this crossed."""
        if meter.route_cost is None:
            meter.route_cost = pages
            if pages < meter.reserved and meter.final is None:
                meter.final = pages
        extra = pages - meter.reserved
        if extra <= 0 or meter.replay:
            return ()
        charge = replace(meter.charge_info, cost=extra, idempotency=None, count_request=False)
        outcome = yield from self.meter(charge, None, lease=meter.leased)
        if outcome.result == "exceeded":
            status = QuotaStatus(
                outcome.limit, outcome.used, 0, charge.period.end, charge.period.label
            )
            raise exceeded_error(outcome, status, [], self.clock())
        if outcome.result == "ok":
            meter.reserved += extra
            meter.update(outcome.used)
        return outcome.crossed


class UncertainCounters:
    """(account, period, environment) counters to rebuild from the store (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: set[tuple[str, str, str]] = set()

    def add(self, charge: Charge) -> None:
        with self._lock:
            self._counters.add((charge.account_id, charge.period.label, charge.environment))

    def discard(self, charge: Charge) -> None:
        with self._lock:
            self._counters.discard((charge.account_id, charge.period.label, charge.environment))

    def take(self) -> list[tuple[str, str, str]]:
        with self._lock:
            taken, self._counters = sorted(self._counters), set()
        return taken

    def give_back(self, counters: Iterable[tuple[str, str, str]]) -> None:
        with self._lock:
            self._counters.update(counters)

    def __contains__(self, counter: object) -> bool:
        return counter in self._counters

    def __len__(self) -> int:
        return len(self._counters)
