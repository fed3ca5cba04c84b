"""Rate-limit leases for the "fast" mode: a rate-limited key costs no Redis trip per request.

A process reserves a few requests under a limit (``lua/rate_lease.lua``): the script moves
the limit's next-free time on as if they were sent at once, so the reservations of all
processes never exceed what ``meter.lua`` would admit. They are admitted here within
:func:`lapse_after` of the reservation and never later: a request admitted up to that long
after its reservation lets at most that long's worth of requests more into any window than
the limit's own GCRA would: one request, or 1% of the limit, whichever is more. What is left
then goes back with the next reservation.
A refusal is remembered until the moment Redis named, so a limited key's flood is refused
here, one trip per interval at most. Blocks double while requests keep coming and halve when
some lapse unspent, like page leases; each is at most 1/spread of the room left.

No I/O: the engine makes the calls and passes the answers in. One lock; a request takes from
every limit it is under, or from none.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from keystile._core.leases import LeaseBook
from keystile._core.metering import Charge
from keystile._core.ratelimits import ACCOUNT_RATE_POLICY, KEY_RATE_POLICY, Rate, RateState
from keystile._core.rediskeys import RedisKeys

#: (the next-free key in Redis, count, period): a changed limit starts a lease of its own.
RateKey = tuple[str, int, int]
#: One limit a request is under: its key, the limit, its policy name.
Limit = tuple[RateKey, Rate, str]
#: A reservation takes at most 1/4 of the room left: processes sharing a key keep some.
RATE_SPREAD = 4
MAX_BLOCK = 256


class _RateLease:
    __slots__ = ("block", "full_at", "have", "refused_until", "room", "until")

    def __init__(self) -> None:
        self.have = 0  # reserved requests not yet admitted
        self.until = 0.0  # wall clock: admitted here only before then
        self.refused_until = 0.0  # Redis had no room: refused here until then
        self.room = 0  # room Redis had left after the last reservation
        self.full_at = 0.0  # when the burst is back whole, as of the last reservation
        self.block = 1


def lapse_after(rate: Rate) -> float:
    """Seconds a reservation may be admitted here: one interval, or 1/100 of the period when
    that is longer (a limit of thousands a second would otherwise lapse between requests)."""
    return max(rate.interval_us / 1e6, rate.period / 100)


def rate_limits(keys: RedisKeys, charge: Charge, leases: LeaseBook) -> list[Limit]:
    """The rate limits a charge is under: the key's, then its account's (as of its counter's
    last page lease)."""
    limits: list[Limit] = []
    account_rate = leases.account_rate(charge.counter)[1]
    rate, account = charge.rate, charge.account_id
    if rate is not None:
        key = keys.rate(account, charge.kid)
        limits.append(((key, rate.count, rate.period), rate, KEY_RATE_POLICY))
    if account_rate is not None:
        key = keys.rate(account, "@" + charge.environment)
        limits.append(
            ((key, account_rate.count, account_rate.period), account_rate, ACCOUNT_RATE_POLICY)
        )
    return limits


class RateBook:
    """This process's rate-limit reservations. Thread-safe; every method is O(limits)."""

    MAX_LEASES = 100_000

    def __init__(self, spread: int = RATE_SPREAD, max_block: int = MAX_BLOCK) -> None:
        self.spread = spread
        self.max_block = max_block
        self._lock = threading.Lock()
        self._leases: dict[RateKey, _RateLease] = {}

    def take(self, limits: Sequence[Limit], now: float) -> tuple[RateState, ...] | RateState | None:
        """One request under every limit: the states after it (admitted), the refusing
        limit's state (a refusal Redis gave, still in force), or None: reserve first. Nothing
        is taken unless all are."""
        with self._lock:
            leases = self._leases
            for key, rate, policy in limits:
                lease = leases.get(key)
                if lease is None:
                    return None
                if lease.have >= 1 and now < lease.until:
                    continue  # reserved: admitted, even after a refusal another request got
                if now < lease.refused_until:
                    return RateState(policy, rate, 0, lease.refused_until - now)
                return None
            states = []
            for key, rate, policy in limits:
                lease = leases[key]
                lease.have -= 1
                left = max(0.0, lease.full_at - now)
                states.append(RateState(policy, rate, lease.have + lease.room, left))
            return tuple(states)

    def holds(self, limits: Sequence[Limit], now: float) -> bool:
        """Whether :meth:`take` would admit a request now (a reservation under every limit)."""
        with self._lock:
            for key, _rate, _policy in limits:
                lease = self._leases.get(key)
                if lease is None or lease.have < 1 or now >= lease.until:
                    return False
            return True

    def untake(self, limits: Sequence[Limit]) -> None:
        """The request was refused after all (its quota): its reservations are unspent."""
        with self._lock:
            for key, _rate, _policy in limits:
                lease = self._leases.get(key)
                if lease is not None:
                    lease.have += 1

    def call_args(self, limits: Sequence[Limit], now: float) -> list[Any]:
        """``rate_lease.lua``'s ARGV (its KEYS: each limit's key). Reservations that lapsed
        unspent go back with it, and their lease's next block is halved."""
        args: list[Any] = [self.spread]
        with self._lock:
            for key, rate, _policy in limits:
                lease = self._leases.get(key)
                back = 0
                if lease is None:
                    if len(self._leases) >= self.MAX_LEASES:
                        self._drop_lapsed(now)
                    lease = self._leases[key] = _RateLease()
                elif now >= lease.until and lease.have:
                    back, lease.have = lease.have, 0
                    lease.block = max(1, lease.block // 2)
                args += (rate.count, rate.period, lease.block, back)
        return args

    def reserved(self, limits: Sequence[Limit], reply: Sequence[Any], sent: float) -> None:
        """``rate_lease.lua`` answered ok; ``sent``: when the call went out (wall clock),
        so each reservation is spent here within :func:`lapse_after` of Redis making it."""
        with self._lock:
            for i, (key, rate, _policy) in enumerate(limits):
                lease = self._leases.get(key)
                if lease is None:
                    lease = self._leases[key] = _RateLease()
                taken, room, full_in = (int(v) for v in reply[1 + 3 * i : 4 + 3 * i])
                if sent >= lease.until:
                    lease.have = 0  # lapsed: those went back with this very call
                lease.have += taken
                lease.until = sent + lapse_after(rate)
                lease.room = room
                lease.full_at = sent + full_in / 1e6
                lease.refused_until = 0.0
                grown = 2 * min(taken, lease.block)  # not per grant: a burst gets many at once
                lease.block = min(self.max_block, rate.count, max(lease.block, grown))

    def refused(self, limits: Sequence[Limit], reply: Sequence[Any], sent: float) -> RateState:
        """``rate_lease.lua`` answered 'rate': the refusing limit's state, remembered (from
        ``sent``, so never past the moment Redis named)."""
        wait, index = int(reply[1]) / 1e6, int(reply[2]) - 1
        key, rate, policy = limits[index]
        with self._lock:
            lease = self._leases.get(key)
            if lease is None:
                lease = self._leases[key] = _RateLease()
            lease.refused_until = sent + wait
            lease.block = max(1, lease.block // 2)
        return RateState(policy, rate, 0, wait)

    def _drop_lapsed(self, now: float) -> None:
        for key in [k for k, v in self._leases.items() if v.until <= now and not v.have]:
            del self._leases[key]
