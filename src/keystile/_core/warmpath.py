"""The warm path: a request whose credential this process holds, decided with plain calls
and no I/O, or with the one meter call that the engine makes and hands back
(:class:`MeterCall`). What the requests of a remembered credential share is decided once and
kept (:mod:`keystile._core.warmtickets`). Everything else takes the steps of
:meth:`keystile._core.admission.Admission.admit`, which :meth:`WarmPath.warm` answers None for.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any, NamedTuple

from keystile._core.charging import NO_ROW, resolve_limit
from keystile._core.credentials import Credentials
from keystile._core.errors import AuthError, BackendError, InvalidInput
from keystile._core.metering import (
    Charge,
    Meter,
    Outcome,
    exceeded_error,
    parse_script_reply,
)
from keystile._core.periods import Period, PeriodPolicy
from keystile._core.principal import Principal
from keystile._core.ratelimits import parse_rate, rate_limited
from keystile._core.settlement import Settlement
from keystile._core.verification import Snapshot, principal_of
from keystile._core.warmtickets import WarmTicket, WarmTickets, ticketable, valid_until


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


class WarmPath(Settlement):
    """Admission's warm half (:class:`~keystile._core.admission.Admission` builds the state
    it reads): a request's cost and period, and the warm path itself."""

    periods: PeriodPolicy
    monotonic: Callable[[], float]
    tickets: WarmTickets
    management_mounts: tuple[tuple[str, re.Pattern[str]], ...]
    _period: tuple[Period, float, float] | None
    _charges: dict[tuple[Any, ...], Charge]

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

    def warm(
        self, creds: Credentials, digest: str, request: RequestInfo, now: float
    ) -> Admitted | MeterCall | None:
        """The common request, decided without I/O or with one meter call: the credential is
        in this process's cache, and carries no Idempotency-Key. None: take :meth:`admit`."""
        cached_at = self.monotonic()  # one read for both caches
        local, limits = self.verifier.local, self.limits
        epochs = local.epoch, limits.epoch  # read before the caches are: see warmtickets
        ticket = self.tickets.get(digest)
        if (
            ticket is None
            or ticket.creds is not creds
            or cached_at >= ticket.fresh_until
            or now >= ticket.valid_until
            or ticket.cache_epoch != epochs[0]
            or ticket.limits_epoch != epochs[1]
            or (self.management_mounts and self.is_management(request.path))
        ):
            ticket = self._full_pass(creds, digest, request, now, cached_at, epochs)
            if ticket is None:
                return None
        return self._ticketed(ticket, digest, now)

    def _full_pass(
        self,
        creds: Credentials,
        digest: str,
        request: RequestInfo,
        now: float,
        cached_at: float,
        epochs: tuple[int, int],
    ) -> WarmTicket | None:
        """What :meth:`warm` decides from the caches for this request, kept for the next ones
        when nothing in it depends on this one. None: take :meth:`admit`."""
        local, limits = self.verifier.local, self.limits
        snapshot = local.get(digest, cached_at)
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
        page_cost = self.settings.page_cost
        if type(page_cost) is int and not (  # (not a bool)
            self.management_mounts and self.is_management(request.path)
        ):
            cost, fixed_cost = page_cost, True
        else:
            cost, fixed_cost = self.cost_of(request), False
        period = self.period_at(now)
        window = self._period  # (period_at's: the ticket ends with the period)
        assert window is not None
        charge = self._charge(snapshot, account, period, cost)
        limit = rate = None
        fresh_until = local.expiry(digest)
        if not self.has_redis:
            row = limits.get(account, cached_at)
            if row is None:
                return None  # admit() reads the limit from the store
            row = None if row is NO_ROW else row
            limit = resolve_limit(self.settings, row, charge.environment)
            rate = None if row is None or row.rate is None else parse_rate(row.rate)
            row_until = limits.expiry(account)
            if fresh_until is not None and row_until is not None and row_until < fresh_until:
                fresh_until = row_until
        until = valid_until(snapshot, window[2])
        ticket = WarmTicket(
            creds, snapshot, account, charge, limit, rate, epochs, fresh_until or 0.0, until
        )
        if fixed_cost and fresh_until is not None and ticketable(snapshot, creds):
            self.tickets.put(digest, ticket)
        return ticket

    def _ticketed(self, ticket: WarmTicket, digest: str, now: float) -> Admitted | MeterCall | None:
        """The warm request, its snapshot, account, charge and limit known (``ticket``): what
        moves with every request is left, the counters and the principal."""
        snapshot, account, charge = ticket.snapshot, ticket.account, ticket.charge
        auth_method = ticket.creds.auth_method
        if self.has_redis:
            checked = self.verifier.trusts_local()
            if checked and self.leases is not None and charge.fits_lease:
                outcome = self._spend_lease(charge, now)
                if outcome is None:
                    return None  # the lease is short: admit() takes a new one
                return self.admitted(snapshot, account, auth_method, charge, outcome, now)
            if not checked and account != snapshot.account_id:
                return None  # another account's counters live in another slot: admit() checks
            keys, args = self.meter_call(charge, None if checked else snapshot, "", "", now)
            return MeterCall(digest, snapshot, account, auth_method, charge, now, keys, args)
        outcome = self.counters.meter(
            charge,
            ticket.limit,
            self.settings.quota_thresholds,
            now,
            self.settings.idempotency_ttl,
            ticket.rate,
        )  # (which adds it to the buffer)
        if outcome is None:
            return None  # admit() reads the usage from the store
        return self.admitted(snapshot, account, auth_method, charge, outcome, now)

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
