"""The meter without Redis: the same rules as ``meter.lua`` (rate limit, quota, key cap,
idempotency, thresholds), in this process's counters under one lock. Exact within one
process; the counters are seeded from the store and written back to it in batches.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from keystile._core.metering import (
    Charge,
    Outcome,
    UsageBuffer,
    basis_points,
    crossed_marks,
    new_outcome,
)
from keystile._core.ratelimits import (
    ACCOUNT_RATE_POLICY,
    KEY_RATE_POLICY,
    LocalRates,
    Rate,
    RateState,
)

#: Without Redis, at most this many Idempotency-Key markers are kept (the oldest go first).
IDEMPOTENCY_MARKERS = 10_000


class LocalCounters:
    """The meter without Redis: the same rules as ``meter.lua``, under one lock."""

    def __init__(self, buffer: UsageBuffer | None = None) -> None:
        """``buffer``: where what they admit is added for the store, under its lock (one lock,
        not two, for a request)."""
        self._buffer = buffer
        self._lock = threading.Lock() if buffer is None else buffer.lock
        self._usage: dict[tuple[str, str, str], dict[str, int]] = {}
        # In the order they were made, so the oldest (the first to expire: one ttl for all)
        # leave from the front.
        self._idempotency: OrderedDict[str, float] = OrderedDict()  # by request digest
        self.rates = LocalRates()

    def has(self, counter: tuple[str, str, str]) -> bool:
        return counter in self._usage

    def seed(
        self,
        account_id: str,
        period: str,
        environment: str,
        fields: dict[str, int],
        limit: int | None,
        thresholds: Sequence[float],
    ) -> None:
        # Thresholds the stored usage already passed were announced before (a restart).
        for threshold in crossed_marks(fields.get("pages", 0), limit, thresholds):
            fields[f"th:{basis_points(threshold)}"] = 1
        with self._lock:
            self._usage.setdefault((account_id, period, environment), fields)

    def meter(
        self,
        charge: Charge,
        limit: int | None,
        thresholds: Sequence[float],
        now: float,
        idem_ttl: int,
        account_rate: Rate | None = None,
    ) -> Outcome | None:
        """None: the counter is not seeded yet (:meth:`seed` it from the store)."""
        with self._lock:
            usage = self._usage.get(charge.counter)
            if usage is None:
                return None
            used = usage["pages"]
            idem = charge.idempotency  # its digest names the account too
            if idem is not None and self._idempotency.get(idem, 0.0) > now:
                return Outcome("replay", used, limit)
            taken: list[tuple[tuple[str, str], float]] | None = None
            rates: tuple[RateState, ...] = ()
            if charge.count_request and (charge.rate is not None or account_rate is not None):
                taken, rates = self._check_rates(charge, account_rate, now)
                if taken is None:
                    return Outcome("rate_limited", used, limit, rates=rates)
            if limit is not None and used + charge.cost > limit:
                return Outcome("exceeded", used, limit)
            key_pages = charge.pages_field
            if charge.key_limit is not None:
                key_used = usage.get(key_pages, 0)
                if key_used + charge.cost > charge.key_limit:
                    return Outcome("exceeded", key_used, charge.key_limit, "key")
            if taken is not None:
                for key, free in taken:
                    self.rates.commit(key, free, now)
            after = usage["pages"] = used + charge.cost
            usage[key_pages] = usage.get(key_pages, 0) + charge.cost
            if charge.count_request:
                usage["requests"] = usage.get("requests", 0) + 1
                key_requests = charge.requests_field
                usage[key_requests] = usage.get(key_requests, 0) + 1
            if idem is not None:
                self._remember(idem, now + idem_ttl, now)
            if self._buffer is not None:
                self._buffer.add_locked(charge, charge.cost, 1 if charge.count_request else 0)
            if (
                not limit
                or not thresholds
                or after * 10_000 < basis_points(min(thresholds)) * limit
            ):
                # (the common case: no mark)
                return new_outcome(Outcome, ("ok", after, limit, "account", (), False, "", rates))
            crossed = []
            for threshold in crossed_marks(after, limit, thresholds):
                mark = f"th:{basis_points(threshold)}"
                if mark not in usage:
                    usage[mark] = 1
                    crossed.append(threshold)
            return Outcome("ok", after, limit, crossed=tuple(crossed), rates=rates)

    def _check_rates(
        self, charge: Charge, account_rate: Rate | None, now: float
    ) -> tuple[list[tuple[tuple[str, str], float]] | None, tuple[RateState, ...]]:
        """Under the lock: the key's rate limit, then its account's. ``(what to commit if the
        request is admitted, the states)``, or ``(None, (the refusing state,))``."""
        rated = []
        if charge.rate is not None:
            rated.append(((charge.account_id, charge.kid), charge.rate, KEY_RATE_POLICY))
        if account_rate is not None:
            rated.append(((charge.account_id, ""), account_rate, ACCOUNT_RATE_POLICY))
        taken, states = [], []
        for key, rate, policy in rated:
            free, state = self.rates.check(key, rate, now, policy)
            if free is None:
                return None, (state,)
            taken.append((key, free))
            states.append(state)
        return taken, tuple(states)

    def _remember(self, idem: str, until: float, now: float) -> None:
        """Under the lock. Expired markers leave first; past the bound the oldest go too
        (such a retry is charged again), so memory stays bounded whatever the traffic."""
        markers = self._idempotency
        while markers and (
            next(iter(markers.values())) <= now or len(markers) >= IDEMPOTENCY_MARKERS
        ):
            markers.popitem(last=False)
        markers[idem] = until
        markers.move_to_end(idem)

    def settle(self, charge: Charge, delta: int, forget_idempotency: bool) -> None:
        with self._lock:
            usage = self._usage.get((charge.account_id, charge.period.label, charge.environment))
            if usage is not None and delta:
                usage["pages"] += delta
                key_pages = charge.pages_field
                usage[key_pages] = usage.get(key_pages, 0) + delta
            if forget_idempotency and charge.idempotency:
                self._idempotency.pop(charge.idempotency, None)
