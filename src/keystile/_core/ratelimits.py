"""Per-key rate limits (``"100/s"``, ``"6000/min"``, ``"100000/h"``), enforced as a GCRA.

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
from typing import Any

from keystile._core.errors import RATE_LIMITED, AuthError, InvalidInput

#: The rate limit's name in the RateLimit fields and in a problem's violated-policies.
KEY_RATE_POLICY = "key-rate"
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
    """Where a key stands under its rate limit after a request: ``remaining`` requests it may
    send at once, ``full_in`` seconds until its whole burst is back (for a refusal: the
    seconds until the next request may go)."""

    rate: Rate
    remaining: int
    full_in: float


def gcra(rate: Rate, next_free_us: float, now_us: float) -> tuple[bool, float, RateState]:
    """One request under ``rate``: ``(admitted, the key's next-free time if admitted,
    state)``. The same arithmetic as ``meter.lua``'s."""
    interval = rate.interval_us
    burst = rate.count * interval
    ahead = max(next_free_us, now_us) + interval - now_us
    if ahead > burst:
        return False, next_free_us, RateState(rate, 0, (ahead - burst) / 1e6)
    return True, now_us + ahead, RateState(rate, int((burst - ahead) // interval), ahead / 1e6)


def rate_fields(reply: Any) -> tuple[int, float]:
    """``meter.lua``'s ``ok`` reply's last two: remaining, and µs until the burst is back."""
    return int(reply[5]), int(reply[6]) / 1e6


def rate_limited(state: RateState, fields: list[tuple[str, str]]) -> AuthError:
    """429 RATE_001 with Retry-After and the response's RateLimit ``fields``."""
    retry = max(1, math.ceil(state.full_in))
    headers = {"retry-after": str(retry), **dict(fields)}
    message = f"This key's rate limit of {state.rate} was exceeded; retry in {retry} s."
    return AuthError(RATE_LIMITED, message, headers, policies=(KEY_RATE_POLICY,))


class LocalRates:
    """Without Redis: each rate-limited key's next-free time, in this process, per account
    it acts for (as in Redis). Its caller holds the counters' lock."""

    MAX_KEYS = 100_000

    def __init__(self) -> None:
        self._next_free: dict[tuple[str, str], float] = {}

    def check(self, key: tuple[str, str], rate: Rate, now: float) -> tuple[float | None, RateState]:
        """``(the next-free time to :meth:`commit` if the request is admitted, or None when
        the limit refuses it; the state)``."""
        admitted, free, state = gcra(rate, self._next_free.get(key, 0.0), now * 1e6)
        return (free if admitted else None), state

    def commit(self, key: tuple[str, str], next_free_us: float, now: float) -> None:
        times = self._next_free
        if len(times) >= self.MAX_KEYS:  # a key whose burst is back whole loses nothing
            now_us = now * 1e6
            for stale in [k for k, t in times.items() if t <= now_us]:
                del times[stale]
        times[key] = next_free_us
