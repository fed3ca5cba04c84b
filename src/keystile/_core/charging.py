"""How a charge reaches its counter (settling it after the response: :mod:`.settlement`).

In strict mode a charge is one call of ``meter.lua`` in Redis; in fast mode pages come from a
lease this process holds (:mod:`keystile._core.leases`); without Redis, from this process's
counters, seeded from the store. Failures follow ``on_backend_error``. Like the rest of the
core, nothing here does I/O: the steps yield it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from keystile._core.errors import BACKEND_UNAVAILABLE, AuthError, BackendError
from keystile._core.leases import LeaseBook, LeaseReport, report_args
from keystile._core.localcache import LocalCache
from keystile._core.localcounters import LocalCounters
from keystile._core.metercalls import MeterCalls
from keystile._core.metering import (
    USAGE_GRACE_SECONDS,
    Charge,
    Meter,
    Outcome,
    UsageBuffer,
    encode_rebuild,
    new_outcome,
    parse_script_reply,
    rebuild_fields,
)
from keystile._core.rateleases import Limit, RateBook, rate_limits
from keystile._core.ratelimitfields import MonthlyPolicies, ratelimit_fields
from keystile._core.ratelimits import Rate, parse_rate
from keystile._core.rediskeys import CALL_MARKER_TTL, RedisKeys
from keystile._core.resends import FIRST, CallIds, Resend, Resends, resolution
from keystile._core.settings import Settings
from keystile._core.store import DEFAULT_PLAN, AccountLimit
from keystile._core.tokens import KEY_ID_PREFIX
from keystile._core.verification import Snapshot, Steps, Verifier

log = logging.getLogger("keystile")
#: Cached for an account with no limit row of its own (None means "not cached").
NO_ROW: Any = object()
_OK = Outcome("ok")


def account_rate_of(row: AccountLimit | None) -> Rate | None:
    return None if row is None or row.rate is None else parse_rate(row.rate)


def resolve_limit(settings: Settings, row: AccountLimit | None, environment: str) -> int | None:
    if environment != settings.environments[0]:
        return settings.test_page_limit  # test keys never touch the live allowance
    if row is None or row.plan == DEFAULT_PLAN:
        return settings.monthly_page_limit
    if row.plan is not None:
        return settings.plans.get(row.plan, settings.monthly_page_limit)
    return row.pages


class Charging:
    """Admission's half after verification (:class:`~keystile._core.admission.Admission`
    builds the state it reads)."""

    settings: Settings
    verifier: Verifier
    keys: RedisKeys
    clock: Callable[[], float]
    has_redis: bool
    counters: LocalCounters
    buffer: UsageBuffer
    resends: Resends
    call_ids: CallIds
    #: Each counter's generation in the last reply: what a resolution expects to find.
    gens: dict[tuple[str, str, str], str]
    #: This process in the counters' pending fields (pending.lua); '' in fast mode.
    holder: str
    #: Fast mode: requests reserved under rate limits, admitted here.
    rate_book: RateBook
    limits: LocalCache[AccountLimit | None]
    leases: LeaseBook | None
    monthly: MonthlyPolicies
    meter_calls: MeterCalls
    lease_ttl_ms: int
    counted: frozenset[int]
    by_points: Any
    _script_tail: tuple[Any, ...]

    def headers(self, meter: Meter) -> list[tuple[str, str]]:
        """The RateLimit fields of a metered response (none for a key without limits)."""
        charge = meter.charge_info
        if meter.limit is None:
            if not meter.rates:
                return []
            monthly = None
        else:
            monthly = self.monthly.get(meter.limit, charge.period, charge.account_id)
        counted_for = (charge.account_id, KEY_ID_PREFIX + charge.kid)
        return ratelimit_fields(monthly, meter.used, self.clock(), meter.rates, counted_for)

    def meter_call(
        self, charge: Charge, unchecked: Snapshot | None, seed: str, rebuild: str, now: float
    ) -> tuple[list[str], list[Any]]:
        """``meter.lua``'s keys and arguments (:class:`~keystile._core.metercalls.MeterCalls`)."""
        return self.meter_calls.call(charge, unchecked, seed, rebuild, now)

    def meter(self, charge: Charge, unchecked: Snapshot | None, lease: bool = True) -> Steps:
        """Check and charge; ``unchecked`` is a snapshot whose stamp to compare at once.
        ``lease``: in fast mode, may be spent from a lease (not when the request's first
        pages were charged in Redis directly: a refund must go back where they came from)."""
        if (
            lease
            and self.leases is not None
            and unchecked is None
            and charge.idempotency is None
            and charge.fits_lease
        ):
            return (yield from self._lease_meter(charge))
        if not self.has_redis:
            limit, account_rate = yield from self._limit(charge.account_id, charge.environment)
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
                account_rate,
            )  # (which adds it to the buffer)
            assert outcome is not None  # seeded above; counters are never dropped
            return outcome
        seed, rebuild = "", ""
        for _ in range(3):
            keys, args = self.meter_call(charge, unchecked, seed, rebuild, self.clock())
            try:
                reply = yield ("redis_meter", (keys, args))
            except BackendError as exc:
                return self._redis_failed(charge, exc, keys)
            parsed = parse_script_reply(reply, self.by_points)
            if parsed == "need_limit" or parsed == "need_usage":
                seed, rebuild = yield from self._seed(parsed, charge, seed, rebuild)
            elif isinstance(parsed, Outcome):
                self._record(charge, parsed)
                return parsed
            else:
                return Outcome("stale")
        raise AuthError(BACKEND_UNAVAILABLE)

    def _seed(self, need: str, charge: Charge, seed: str, rebuild: str) -> Steps:
        """A script found the counter's limit or usage missing in Redis: read it from the
        store, for the next call to seed. ``(seed, rebuild)`` for that call."""
        if need == "need_limit":
            limit, rate = yield from self._limit(charge.account_id, charge.environment)
            seed = "none" if limit is None else str(limit)
            return (seed if rate is None else f"{seed};{rate.count};{rate.period}"), rebuild
        rebuild = encode_rebuild((yield from self._store_usage(charge)))
        # The rebuilt counter holds every charge this process recorded, including those
        # admitted while Redis was down: nothing left to resolve.
        self.resends.drop_counter(charge.counter)
        return seed, rebuild

    def _spend_lease(self, charge: Charge, now: float) -> Outcome | None:
        """Fast mode: the charge out of this process's leases (pages, and a request under
        each rate limit), or None when one is short (or may have lapsed in Redis by ``now``)."""
        leases = self.leases
        assert leases is not None
        counter = charge.counter
        rated = charge.count_request and (charge.rate is not None or counter in leases.rated)
        # Unrated, the charge goes to the usage buffer as it is spent; rated, once admitted.
        spent = leases.spend(
            counter, charge.kid, charge.cost, charge.count_request, now, None if rated else charge
        )
        if spent is None:
            return None
        rates: Any = ()
        if rated:
            rates = self.rate_book.take(rate_limits(self.keys, charge, leases), now)
            if rates.__class__ is not tuple:
                leases.unspend(counter, charge.kid, charge.cost)
                if rates is None:
                    return None
                used, limit = leases.view(counter)
                return Outcome("rate_limited", used, limit, rates=(rates,))
            self._record(charge, _OK)
        _, used, limit = spent
        return new_outcome(Outcome, ("ok", used, limit, "account", (), True, "", rates))

    def _lease_meter(self, charge: Charge) -> Steps:
        """Fast mode: spend from the leases; when the pages are short, take a block from the
        Redis counter (``lease.lua``, which never leases past the limit), and when a rate
        limit's requests are, reserve some (``rate_lease.lua``)."""
        leases = self.leases
        assert leases is not None
        crossed: tuple[float, ...] = ()
        for _ in range(8):  # siblings (threads) may spend what this request leased: again
            now = self.clock()
            outcome = self._spend_lease(charge, now)
            if outcome is not None:
                return outcome._replace(crossed=crossed) if crossed else outcome
            if not leases.holds(charge.counter, charge.cost, now):
                got = yield from self._lease_pages(charge)
                if isinstance(got, Outcome):
                    return got
                crossed += got
                continue
            limits = rate_limits(self.keys, charge, leases)
            refusal = yield from self._reserve_rates(charge, limits)
            # A sibling's reservation may have come in meanwhile, and Redis counts it as
            # sent: spend it (leasing pages again if siblings spent them), or it would be
            # left unspent at the end of a burst.
            if refusal is not None and not self.rate_book.holds(limits, self.clock()):
                return refusal
        raise AuthError(BACKEND_UNAVAILABLE)

    def _reserve_rates(self, charge: Charge, limits: list[Limit]) -> Steps:
        """Reserve requests under each rate limit: None when done, else the refusal."""
        sent = self.clock()
        names = [key[0] for key, _rate, _policy in limits]
        args = self.rate_book.call_args(limits, sent)
        try:
            reply = yield ("redis_rate_lease", (names, args))
        except BackendError as exc:
            return self._redis_failed(charge, exc)
        if reply[0] == "ok":
            self.rate_book.reserved(limits, reply, sent)
            return None
        assert self.leases is not None
        used, limit = self.leases.view(charge.counter)
        refused = self.rate_book.refused(limits, reply, sent)
        return Outcome("rate_limited", used, limit, rates=(refused,))

    def _lease_pages(self, charge: Charge) -> Steps:
        """One block of pages from the Redis counter (``lease.lua``): the thresholds it
        crossed, or the Outcome that ends the request (exceeded, degraded)."""
        assert self.leases is not None
        leases = self.leases
        counter = charge.counter
        keys = self.keys
        seed, rebuild = "", ""
        for _ in range(3):
            sent = self.clock()
            names = [
                keys.usage(*counter),
                keys.limit(charge.account_id, charge.environment),
                keys.leases(*counter),
                keys.call(charge.account_id, self.call_ids()),
            ]
            usage_ttl = int(charge.period.end.timestamp() - sent) + USAGE_GRACE_SECONDS
            args = leases.call_args(
                counter, charge.cost, seed, rebuild, usage_ttl, self.settings.cache_ttl,
                self.lease_ttl_ms, self._script_tail[0],
            )  # fmt: skip
            try:
                reply = yield ("redis_lease", (names, args))
            except BackendError as exc:
                lost = [names[0], names[2], names[3]]
                self.resends.add(Resend("lease_lost", lost, [leases.holder], counter))
                return self._redis_failed(charge, exc)
            kind = reply[0]
            if kind == "need_limit" or kind == "need_usage":
                seed, rebuild = yield from self._seed(kind, charge, seed, rebuild)
                continue
            if kind == "exceeded":
                if leases.holds(counter, charge.cost, self.clock()):
                    return ()  # what Redis counted as used is here: a sibling's grant, unspent
                limit = None if int(reply[2]) < 0 else int(reply[2])
                return Outcome("exceeded", int(reply[1]), limit)
            # Spent here for 2/3 of the lease's ttl after the call went out, at most: the
            # lease must not lapse in Redis, and be forgiven, while pages of it are spent.
            leases.granted(counter, reply, sent + self.lease_ttl_ms / 1500)
            self.gens[counter] = str(reply[5])
            marks = str(reply[4])
            return tuple(self.by_points[int(t)] for t in marks.split(",")) if marks else ()
        raise AuthError(BACKEND_UNAVAILABLE)

    def lease_reports(self, *, keep: bool) -> list[tuple[LeaseReport, list[str], list[Any]]]:
        """Fast mode, at flush and shutdown: what to tell Redis of the leases (spent pages,
        requests, unused pages given back), as ``lease_report.lua`` calls."""
        if self.leases is None:
            return []
        holder = self.leases.holder
        keys = self.keys
        return [
            (
                report,
                [
                    keys.usage(*report.counter),
                    keys.leases(*report.counter),
                    keys.call(report.counter[0], self.call_ids()),
                ],
                [FIRST, CALL_MARKER_TTL, *report_args(report, holder, self.lease_ttl_ms)],
            )
            for report in self.leases.reports(keep=keep)
        ]

    def lease_reported(self, report: LeaseReport, reply: Sequence[Any]) -> None:
        assert self.leases is not None
        if reply[0] == "lost":
            self.leases.forget(report.counter, report.gen)
        elif len(reply) > 2 and int(reply[2]) == 0:
            self.leases.revoke(report.counter)  # presumed dead and swept: stop spending it

    def _redis_failed(
        self, charge: Charge, error: BackendError, call_keys: list[str] | None = None
    ) -> Outcome:
        """A meter (``call_keys``: its usage, idempotency and marker keys) or lease call
        failed, even sent again: refuse or go on (the policy), and have the counter resolved
        once Redis answers."""
        marked = None if call_keys is None else [call_keys[0], call_keys[2], call_keys[-1]]
        gen = self.gens.get(charge.counter, "")
        try:
            self.verifier.backend_down(error)
        except AuthError:
            if marked is not None:  # a meter call (a lease call's: lease_lost.lua, queued)
                self.resends.add(
                    resolution(self.keys, charge, marked, gen, self.holder, admitted=False)
                )
            raise
        self.resends.add(resolution(self.keys, charge, marked, gen, self.holder, admitted=True))
        return self._degraded(charge)

    def _store_usage(self, charge: Charge) -> Steps:
        try:
            rows = yield ("store_usage", (charge.account_id, (charge.period.label,)))
        except BackendError:
            raise AuthError(BACKEND_UNAVAILABLE) from None
        mine = [r for r in rows if r.environment == charge.environment]
        pending = self.buffer.pending(charge.account_id, charge.period.label, charge.environment)
        fields = rebuild_fields(mine, pending)
        if self.holder:  # the rebuilt counter holds this process's unflushed pages: say so
            fields[f"p:{self.holder}"] = sum(d.pages for d in pending)
        return fields

    def _limit(self, account_id: str, environment: str) -> Steps:
        """``(the page limit, the account's rate limit or None)``."""
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
                    account_id, account_id, row or NO_ROW, self.settings.local_cache_ttl
                )
        row = None if row is NO_ROW else row
        return resolve_limit(self.settings, row, environment), account_rate_of(row)

    def _record(self, charge: Charge, outcome: Outcome) -> None:
        if outcome.result == "ok":
            self.buffer.add(charge, charge.cost, 1 if charge.count_request else 0)
            gen = outcome.gen
            if gen and self.gens.get(charge.counter) != gen:
                if len(self.gens) >= 10_000:  # a bound, like the charge cache's
                    self.gens.clear()
                self.gens[charge.counter] = gen

    def _degraded(self, charge: Charge) -> Outcome:
        """Redis is down and the policy admits: the store records the charge."""
        self.buffer.add(charge, charge.cost, 1 if charge.count_request else 0)
        return Outcome("degraded")
