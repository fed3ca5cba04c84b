"""After the response: a request's real cost charged, or its reservation refunded.

The status settles it (the core decides which statuses count); ``cost(n)`` on a route raises
or lowers the reservation once routing has run. A settle call Redis does not confirm is sent
again by the flusher: its marker (``once.lua``) makes that safe.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from keystile._core.charging import Charging
from keystile._core.errors import BackendError
from keystile._core.metering import Charge, Meter, QuotaStatus, exceeded_error
from keystile._core.rediskeys import CALL_MARKER_TTL
from keystile._core.resends import FIRST, Resend
from keystile._core.verification import Steps


class Settlement(Charging):
    """Charging, and what follows the response (the engine's ``settle`` and ``reserve``)."""

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
        marker = keys.call(charge.account_id, self.call_ids())
        args = [FIRST, CALL_MARKER_TTL, charge.kid, delta, "1" if forget else "0", self.holder]
        return charge, [usage, idem, marker], args

    def settle_failed(self, charge: Charge, keys: list[str], args: list[Any]) -> None:
        """A settle call failed, even sent again: sent again by the flusher until Redis
        answers (its marker makes that safe)."""
        self.resends.add(Resend("settle", keys, args, charge.counter))

    def settle(self, meter: Meter, status_code: int | None) -> Steps:
        call = self.settle_call(meter, status_code)
        if call is not None:
            try:
                yield ("redis_settle", (call[1], call[2]))
            except BackendError:
                self.settle_failed(*call)
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
