"""The RateLimit fields of a response (draft-ietf-httpapi-ratelimit-headers): one policy for
the monthly quota and one per rate limit (the key's, the account's), in the same two lists;
and the X-RateLimit trio for the quota, which older clients parse.

Each policy's ``pk`` (partition key) is what it counts per: the account for ``"monthly"`` and
``"account-rate"`` (an ``x-account-id`` request counts against the account named), the key
for ``"key-rate"``.
"""

from __future__ import annotations

import base64
import math
from functools import lru_cache
from typing import NamedTuple

from keystile._core.metering import MONTHLY_POLICY
from keystile._core.periods import Period
from keystile._core.ratelimits import KEY_RATE_POLICY, RateState

Fields = list[tuple[str, str]]


@lru_cache(maxsize=4096)
def partition_key(name: str) -> str:
    """A structured-field byte sequence: ``:<base64>:``."""
    return f":{base64.b64encode(name.encode()).decode()}:"


class MonthlyPolicy(NamedTuple):
    """What the monthly quota's fields hold for a whole period, whatever the usage."""

    policy: str  # the RateLimit-Policy item
    pk: str
    pages: int
    limit: str
    reset_at: str  # X-RateLimit-Reset: the period's end, epoch seconds
    end: float


def monthly_policy(limit: int, period: Period, account: str) -> MonthlyPolicy:
    window = int((period.end - period.start).total_seconds())
    part = partition_key(account)
    end = period.end.timestamp()
    policy = f'"{MONTHLY_POLICY}";q={limit};w={window};pk={part}'
    return MonthlyPolicy(policy, part, limit, str(limit), str(int(end)), end)


class MonthlyPolicies:
    """:func:`monthly_policy`, kept: building it costs more than the rest of the fields."""

    __slots__ = ("_kept",)

    def __init__(self) -> None:
        self._kept: dict[tuple[int, str, str], MonthlyPolicy] = {}

    def get(self, limit: int, period: Period, account: str) -> MonthlyPolicy:
        kept = self._kept.get((limit, account, period.label))
        if kept is None:
            if len(self._kept) >= 10_000:
                self._kept.clear()
            kept = self._kept[limit, account, period.label] = monthly_policy(limit, period, account)
        return kept


def ratelimit_fields(
    monthly: MonthlyPolicy | None,
    used: int,
    now: float,
    rates: tuple[RateState, ...],
    pk: tuple[str, str],
) -> Fields:
    """``monthly``: the quota's policy (None: no monthly limit) and ``used`` its pages;
    ``pk``: the (account, key id) the request was counted for."""
    policies, limits = [], []
    fields: Fields = []
    if monthly is not None:
        remaining = str(max(0, monthly.pages - used))
        reset = max(1, math.ceil(monthly.end - now))
        limit = f'"{MONTHLY_POLICY}";r={remaining};t={reset};pk={monthly.pk}'
        if not rates:  # the common case: one policy
            return [
                ("ratelimit-policy", monthly.policy),
                ("ratelimit", limit),
                ("x-ratelimit-limit", monthly.limit),
                ("x-ratelimit-remaining", remaining),
                ("x-ratelimit-reset", monthly.reset_at),
            ]
        fields = [
            ("x-ratelimit-limit", monthly.limit),
            ("x-ratelimit-remaining", remaining),
            ("x-ratelimit-reset", monthly.reset_at),
        ]
        policies.append(monthly.policy)
        limits.append(limit)
    for state in rates:
        name, rate = state.policy, state.rate
        part = partition_key(pk[1] if name == KEY_RATE_POLICY else pk[0])
        reset = max(0, math.ceil(state.full_in))
        policies.append(f'"{name}";q={rate.count};w={rate.period};pk={part}')
        limits.append(f'"{name}";r={state.remaining};t={reset};pk={part}')
    if not policies:
        return []
    return [("ratelimit-policy", ", ".join(policies)), ("ratelimit", ", ".join(limits)), *fields]
