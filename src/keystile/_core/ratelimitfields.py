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

from keystile._core.metering import MONTHLY_POLICY, QuotaStatus
from keystile._core.ratelimits import KEY_RATE_POLICY, RateState

Fields = list[tuple[str, str]]


@lru_cache(maxsize=4096)
def partition_key(name: str) -> str:
    """A structured-field byte sequence: ``:<base64>:``."""
    return f":{base64.b64encode(name.encode()).decode()}:"


def ratelimit_fields(
    quota: QuotaStatus | None,
    window: int,
    now: float,
    rates: tuple[RateState, ...],
    pk: tuple[str, str],
) -> Fields:
    """``pk``: the (account, key id) the request was counted for."""
    policies, limits = [], []
    fields: Fields = []
    if quota is not None and quota.limit is not None and quota.remaining is not None:
        part = partition_key(pk[0])
        reset = max(1, math.ceil(quota.resets_at.timestamp() - now))
        policy = f'"{MONTHLY_POLICY}";q={quota.limit};w={window};pk={part}'
        limit = f'"{MONTHLY_POLICY}";r={quota.remaining};t={reset};pk={part}'
        trio = (str(quota.limit), str(quota.remaining), str(int(quota.resets_at.timestamp())))
        if not rates:  # the common case: one policy
            return [
                ("ratelimit-policy", policy),
                ("ratelimit", limit),
                ("x-ratelimit-limit", trio[0]),
                ("x-ratelimit-remaining", trio[1]),
                ("x-ratelimit-reset", trio[2]),
            ]
        fields = [
            ("x-ratelimit-limit", trio[0]),
            ("x-ratelimit-remaining", trio[1]),
            ("x-ratelimit-reset", trio[2]),
        ]
        policies.append(policy)
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
