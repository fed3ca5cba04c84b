"""Rate limits (``"100/s"``, ``"6000/min"``, ``"100000/h"``) of a key, and of an account (all
its keys together), enforced as a GCRA.

A key limited to N per period may send N requests at once, then one every period/N: the
generic cell rate algorithm keeps one time per key (when its bucket is next empty), so there
is no window edge at which a fixed window would let 2N through. The same rules run in
``meter.lua`` (with Redis: exact across processes) and in :class:`LocalRates` (without).
A request the limit refuses is never charged pages.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from keystile._core.errors import RATE_LIMITED, AuthError, InvalidInput

#: The rate limits' names in the RateLimit fields and in a problem's violated-policies.
KEY_RATE_POLICY = "key-rate"
ACCOUNT_RATE_POLICY = "account-rate"
_UNITS = {"s": 1, "sec": 1, "second": 1, "min": 60, "minute": 60, "h": 3600, "hour": 3600}
_SHOWN = {1: "s", 60: "min", 3600: "h"}
_RATE = re.compile(r"\s*([1-9][0-9]{0,8})\s*/\s*([a-z]+)\s*")


@dataclass(frozen=True, slots=True)
class Rate:
    count: int
    period: int  # seconds

    @property
    def interval_us(self) -> int:
        """Microseconds between requests, rounded up: never more than ``count`` a period."""
        return -(-self.period * 1_000_000 // self.count)

    def __str__(self) -> str:
        return f"{self.count}/{_SHOWN[self.period]}"


@lru_cache(maxsize=1024)
def parse_rate(text: str) -> Rate:
    """``"100/s"`` (also ``/sec``, ``/min``, ``/minute``, ``/h``, ``/hour``) as a Rate."""
    match = _RATE.fullmatch(text.lower())
    if match is None or match[2] not in _UNITS:
        raise ValueError(text)
    return Rate(int(match[1]), _UNITS[match[2]])


def check_rate_limit(field: str, value: Any) -> str | None:
    """A rate limit in its normal form (``"100/min"``), or None for none."""
    if value is None:
        return None
    try:
        if not isinstance(value, str) or len(value) > 32:
            raise ValueError
        return str(parse_rate(value))
    except ValueError:
        raise InvalidInput(
            field, "expected requests per second, minute or hour: '100/s', '6000/min', '1000/h'"
        ) from None


@dataclass(frozen=True, slots=True)
class RateState:
    """Where a key (or account) stands under a rate limit after a request: ``remaining``
    requests it may send at once, ``full_in`` seconds until its whole burst is back (for a
    refusal: the seconds until the next request may go)."""

    policy: str
    rate: Rate
    remaining: int
    full_in: float


def gcra(
    rate: Rate, next_free_us: float, now_us: float, policy: str = KEY_RATE_POLICY
) -> tuple[bool, float, RateState]:
    """One request under ``rate``: ``(admitted, the next-free time if admitted, state)``. The
    same arithmetic as ``meter.lua``'s."""
    interval = rate.interval_us
    burst = rate.count * interval
    ahead = max(next_free_us, now_us) + interval - now_us
    if ahead > burst:
        return False, next_free_us, RateState(policy, rate, 0, (ahead - burst) / 1e6)
    left = int((burst - ahead) // interval)
    return True, now_us + ahead, RateState(policy, rate, left, ahead / 1e6)


_POLICIES = {"k": KEY_RATE_POLICY, "a": ACCOUNT_RATE_POLICY}


def states_of_reply(tail: Any) -> tuple[RateState, ...]:
    """``meter.lua``'s rate limits after an ``ok``: groups of (which, count, period,
    remaining, µs until the burst is back), the key's first."""
    return tuple(
        RateState(
            _POLICIES[str(tail[i])],
            Rate(int(tail[i + 1]), int(tail[i + 2])),
            int(tail[i + 3]),
            int(tail[i + 4]) / 1e6,
        )
        for i in range(0, len(tail) - 4, 5)
    )


def refusal_of_reply(reply: Any) -> RateState:
    """``meter.lua``'s ``{'rate', used, limit, µs to wait, which, count, period}``."""
    which, count, period = _POLICIES[str(reply[4])], int(reply[5]), int(reply[6])
    return RateState(which, Rate(count, period), 0, int(reply[3]) / 1e6)


def rate_limited(state: RateState, fields: list[tuple[str, str]]) -> AuthError:
    """429 RATE_001 with Retry-After and the response's RateLimit ``fields``."""
    retry = max(1, math.ceil(state.full_in))
    headers = {"retry-after": str(retry), **dict(fields)}
    whose = "This key's" if state.policy == KEY_RATE_POLICY else "The account's"
    message = f"{whose} rate limit of {state.rate} was exceeded; retry in {retry} s."
    return AuthError(RATE_LIMITED, message, headers, policies=(state.policy,))


class LocalRates:
    """Without Redis: each rate-limited key's next-free time, in this process, per account
    it acts for (as in Redis). Its caller holds the counters' lock."""

    MAX_KEYS = 100_000

    def __init__(self) -> None:
        self._next_free: dict[tuple[str, str], float] = {}

    def check(
        self, key: tuple[str, str], rate: Rate, now: float, policy: str
    ) -> tuple[float | None, RateState]:
        """``(the next-free time to :meth:`commit` if the request is admitted, or None when
        the limit refuses it; the state)``. ``key``: (account, key id, or "" for the
        account's own limit)."""
        admitted, free, state = gcra(rate, self._next_free.get(key, 0.0), now * 1e6, policy)
        return (free if admitted else None), state

    def commit(self, key: tuple[str, str], next_free_us: float, now: float) -> None:
        times = self._next_free
        if len(times) >= self.MAX_KEYS:  # a key whose burst is back whole loses nothing
            now_us = now * 1e6
            for stale in [k for k, t in times.items() if t <= now_us]:
                del times[stale]
        times[key] = next_free_us
