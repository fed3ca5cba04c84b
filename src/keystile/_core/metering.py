"""Monthly page metering: reserve before the handler, settle after, never admit past the limit.

With Redis the check-and-charge is one Lua script (``lua/meter.lua``) that also checks the
key's state stamp, so metering adds no round trip. Without Redis the same rules run here
under a lock: exact within one process. Either way every charge is also buffered and
written to the store every ``usage_flush_interval`` seconds, so a counter Redis loses is
rebuilt from the store and an allowance never silently resets.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from keystile._core.errors import QUOTA_EXCEEDED, AuthError, InvalidInput
from keystile._core.periods import Period
from keystile._core.ratelimits import Rate, RateState, refusal_of_reply, states_of_reply
from keystile._core.store import UsageDelta, UsageRow

#: The monthly quota's name in the RateLimit fields and in a problem's violated-policies.
MONTHLY_POLICY = "monthly"
#: Keep a period's Redis counter this long after the period ends (reports read it).
USAGE_GRACE_SECONDS = 35 * 24 * 3600


@dataclass(frozen=True, slots=True)
class QuotaStatus:
    """``request.state.principal.quota``: where the account stands this period."""

    limit: int | None
    used: int
    remaining: int | None
    resets_at: datetime
    period: str


@dataclass(frozen=True, slots=True)
class ThresholdEvent:
    """Passed to ``on_quota_threshold`` once per threshold, account, environment and period."""

    account_id: str
    environment: str
    period: str
    threshold: float
    limit: int
    used: int


@dataclass(frozen=True, slots=True)
class Charge:
    """What to meter for one request: who, which counter, how much."""

    account_id: str
    environment: str
    kid: str
    key_limit: int | None
    period: Period
    cost: int
    idempotency: str | None  # digest of the Idempotency-Key header
    count_request: bool = True
    rate: Rate | None = None  # the key's rate limit, checked when count_request
    # The key's fields in the usage hash, named once per charge.
    pages_field: str = field(init=False, repr=False, compare=False)
    requests_field: str = field(init=False, repr=False, compare=False)
    buffer_key: tuple[str, str, str, str] = field(init=False, repr=False, compare=False)
    #: Which usage counter this charge goes to: (account, period, environment).
    counter: tuple[str, str, str] = field(init=False, repr=False, compare=False)
    #: Fast mode may spend it from a lease: no page cap of the key's own, which only Redis
    #: can check across processes (its rate limit is leased too).
    fits_lease: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pages_field", f"k:{self.kid}:pages")
        object.__setattr__(self, "requests_field", f"k:{self.kid}:requests")
        counter = (self.account_id, self.period.label, self.environment)
        object.__setattr__(self, "counter", counter)
        object.__setattr__(self, "buffer_key", (*counter, self.kid))
        object.__setattr__(self, "fits_lease", self.key_limit is None)


class Outcome(NamedTuple):
    """The answer of one meter step. ``result`` is ok, replay, exceeded, stale. (A named
    tuple: every request makes one, at a third of a frozen dataclass's cost.)"""

    result: str
    used: int = 0
    limit: int | None = None
    scope: str = "account"
    crossed: tuple[float, ...] = ()
    leased: bool = False  # spent from this process's lease (fast mode): settled locally
    #: The Redis counter's generation that took the charge (see ``resolve.lua``).
    gen: str = ""
    #: The rate limits after it (the key's, the account's), or the one that refused it.
    rates: tuple[RateState, ...] = ()


#: ``new_outcome(Outcome, (every field, in order))``: how the warm paths make theirs (a named
#: tuple's constructor, with keywords, costs twice as much).
new_outcome = tuple.__new__


class Meter:
    """One request's metering state, reachable as ``principal.meter``.

    A plain slotted class, and its :attr:`status` is built when first read: most requests
    never look at it, and every request makes a meter."""

    __slots__ = (
        "_status", "charge_info", "final", "leased", "limit", "rates", "replay", "reserved",
        "route_cost", "settled", "used",
    )  # fmt: skip

    def __init__(
        self,
        charge_info: Charge,
        limit: int | None,
        used: int,
        reserved: int,
        replay: bool,
        leased: bool = False,
        rates: tuple[RateState, ...] = (),
    ) -> None:
        self.charge_info, self.limit, self.used, self.rates = charge_info, limit, used, rates
        self.reserved, self.replay = reserved, replay
        #: Its pages came from this process's lease (fast mode): settled locally.
        self.leased = leased
        self.final: int | None = None
        self.settled = False
        self.route_cost: int | None = None  # the first cost() a route declared
        self._status: QuotaStatus | None = None

    @property
    def status(self) -> QuotaStatus:
        status = self._status
        if status is None:
            limit, period = self.limit, self.charge_info.period
            remaining = None if limit is None else max(0, limit - self.used)
            status = self._status = QuotaStatus(
                limit, self.used, remaining, period.end, period.label
            )
        return status

    def update(self, used: int) -> None:
        """The counter as a later reservation left it."""
        self.used = used
        self._status = None

    def __repr__(self) -> str:
        return f"Meter(reserved={self.reserved}, limit={self.limit}, used={self.used})"

    def charge(self, pages: int) -> None:
        """The real cost, known after the work: replaces the estimate when settling."""
        if isinstance(pages, bool) or not isinstance(pages, int) or pages < 0:
            raise InvalidInput("pages", "expected a whole number >= 0")
        self.final = pages

    def delta(self, status_code: int | None, counted: Collection[int]) -> int:
        """Pages to add (or refund, negative) once the response is known."""
        if self.replay:
            return 0
        if status_code is None or status_code not in counted:
            return -self.reserved
        return (self.final if self.final is not None else self.reserved) - self.reserved


def check_route_cost(pages: object) -> int:
    """A route's declared cost, checked when the decorator is applied (at import)."""
    if isinstance(pages, bool) or not isinstance(pages, int) or pages < 0:
        raise ValueError("cost(pages): expected a whole number >= 0")
    return pages


def basis_points(threshold: float) -> int:
    """Thresholds are compared in integers: 0.55 of 100 pages is 55, not 55.000000000000007."""
    return round(threshold * 10_000)


def crossed_marks(pages: int, limit: int | None, thresholds: Sequence[float]) -> list[float]:
    if not limit:
        return []
    return [t for t in thresholds if pages * 10_000 >= basis_points(t) * limit]


# Adapters read (and hand back to the app) a body up to this size to tell a retry from a new
# request under the same key; a larger one is charged every time.
IDEMPOTENT_BODY_LIMIT = 16 * 1024 * 1024


def idempotency_digest(
    account_id: str,
    environment: str,
    method: str,
    path: str,
    query: str,
    body_digest: str | None,
    header: str | None,
) -> str | None:
    """What one Idempotency-Key names: this account's, this environment's request with this
    method, path, query and body. The same key on any other request is a new request, like
    Stripe's rule; None (no replay) when the body could not be compared."""
    if not header or body_digest is None:
        return None
    parts = (account_id, environment, method.upper(), path, query, body_digest, header)
    return hashlib.sha256("\0".join(parts).encode("utf-8", "replace")).hexdigest()[:32]


def exceeded_error(
    outcome: Outcome, status: QuotaStatus, headers: list[tuple[str, str]], now: float
) -> AuthError:
    whose = "This key's" if outcome.scope == "key" else "Monthly"
    resets = status.resets_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    message = f"{whose} page limit of {outcome.limit} pages exceeded; it resets at {resets}."
    retry = max(1, math.ceil(status.resets_at.timestamp() - now))
    headers = [("retry-after", str(retry)), *headers]
    return AuthError(QUOTA_EXCEEDED, message, dict(headers), policies=(MONTHLY_POLICY,))


def rebuild_fields(rows: Iterable[UsageRow], deltas: Iterable[UsageDelta]) -> dict[str, int]:
    """A usage hash's fields, from the store's rows plus this process's unflushed deltas."""
    fields: dict[str, int] = {"pages": 0, "requests": 0}

    def add(kid: str, pages: int, requests: int) -> None:
        fields["pages"] += pages
        fields["requests"] += requests
        fields[f"k:{kid}:pages"] = fields.get(f"k:{kid}:pages", 0) + pages
        fields[f"k:{kid}:requests"] = fields.get(f"k:{kid}:requests", 0) + requests

    for row in rows:
        add(row.kid, row.pages, row.requests)
    for delta in deltas:
        add(delta.kid, delta.pages, delta.requests)
    return fields


def thresholds_by_points(thresholds: Sequence[float]) -> dict[int, float]:
    return {basis_points(t): t for t in thresholds}


def parse_script_reply(reply: Sequence[Any], by_points: Mapping[int, float]) -> Outcome | str:
    """``meter.lua``'s answer; ``by_points`` is :func:`thresholds_by_points` of the settings."""
    kind = reply[0]
    if kind in ("stale", "need_limit", "need_usage"):
        return str(kind)
    limit = None if int(reply[2]) < 0 else int(reply[2])
    if kind == "ok":
        marks = reply[3]
        crossed = tuple(by_points[int(t)] for t in str(marks).split(",")) if marks else ()
        rates = states_of_reply(reply[5:])
        return new_outcome(
            Outcome, ("ok", int(reply[1]), limit, "account", crossed, False, str(reply[4]), rates)
        )
    if kind == "rate":
        return Outcome("rate_limited", int(reply[1]), limit, rates=(refusal_of_reply(reply),))
    if kind == "exceeded":
        return Outcome("exceeded", int(reply[1]), limit, str(reply[3]))
    return Outcome("replay", int(reply[1]), limit)


class UsageBuffer:
    """Charges not yet written to the store, summed per key and period."""

    def __init__(self) -> None:
        #: Also the lock of the counters without Redis and of fast mode's leases, which add to
        #: the buffer as they count.
        self.lock = threading.Lock()
        self._pending: dict[tuple[str, str, str, str], list[int]] = {}

    def add(self, charge: Charge, pages: int, requests: int) -> None:
        with self.lock:
            self.add_locked(charge, pages, requests)

    def add_locked(self, charge: Charge, pages: int, requests: int) -> None:
        """:meth:`add`, the caller holding :attr:`lock`."""
        counts = self._pending.get(charge.buffer_key)
        if counts is None:
            counts = self._pending[charge.buffer_key] = [0, 0]
        counts[0] += pages
        counts[1] += requests

    def pending(self, account_id: str, period: str, environment: str) -> list[UsageDelta]:
        with self.lock:
            return [
                UsageDelta(a, p, e, k, pages, requests)
                for (a, p, e, k), (pages, requests) in self._pending.items()
                if (a, p, e) == (account_id, period, environment)
            ]

    def take(self) -> list[UsageDelta]:
        with self.lock:
            pending, self._pending = self._pending, {}
        return [
            UsageDelta(a, p, e, k, pages, req) for (a, p, e, k), (pages, req) in pending.items()
        ]

    def give_back(self, deltas: Iterable[UsageDelta]) -> None:
        """A failed write: keep the deltas for the next flush rather than lose them."""
        with self.lock:
            for d in deltas:
                counts = self._pending.setdefault(
                    (d.account_id, d.period, d.environment, d.kid), [0, 0]
                )
                counts[0] += d.pages
                counts[1] += d.requests


def encode_rebuild(fields: dict[str, int]) -> str:
    return json.dumps(fields, separators=(",", ":"))
