"""``meter.lua``'s keys and arguments for a charge: what strict mode sends on every request.

All of them but the call's marker and the counter's time to live are the same for every
request of one charge (and the key's snapshot), so a warm request copies them from what its charge's
first request built rather than naming six keys again. No I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keystile._core.metering import USAGE_GRACE_SECONDS, Charge
from keystile._core.rediskeys import CALL_MARKER_TTL, RedisKeys
from keystile._core.resends import FIRST
from keystile._core.verification import Snapshot

#: args[TTL_ARG]: how long the usage counter lives, from the request's time.
TTL_ARG = 8


class MeterCalls:
    """``meter.lua`` calls. Thread-safe: a lookup and a store are single dictionary steps."""

    __slots__ = ("_call_id", "_holder", "_kept", "_keys", "_size", "_tail")

    def __init__(
        self,
        keys: RedisKeys,
        call_id: Callable[[], str],
        holder: str,
        tail: tuple[str, int, int],
        size: int,
    ) -> None:
        """``tail``: the thresholds (in basis points), idempotency and limit time to live;
        ``size``: at most this many charges' calls kept (as many as the cache holds keys)."""
        self._keys = keys
        self._call_id = call_id
        self._holder = holder
        self._tail = tail
        self._size = size
        # By the id of a charge (held here, so the id is not reused), with the snapshot it
        # was built for: a key's newer snapshot replaces it.
        self._kept: dict[int, tuple[Charge, Snapshot | None, list[str], list[Any], float]] = {}

    def call(
        self, charge: Charge, unchecked: Snapshot | None, seed: str, rebuild: str, now: float
    ) -> tuple[list[str], list[Any]]:
        """Keys and arguments; ``unchecked``: a snapshot whose state stamp to compare in the
        same call. ``seed``/``rebuild``: the limit and usage to put in Redis ('' = none)."""
        kept = self._kept.get(id(charge))
        if kept is None or kept[0] is not charge or kept[1] is not unchecked:
            kept = self._keep(charge, unchecked)
        _, _, keys, args, end = kept
        args = args.copy()
        args[TTL_ARG] = int(end - now) + USAGE_GRACE_SECONDS
        if seed or rebuild:
            args[6], args[7] = seed, rebuild
        return [*keys, self._keys.call(charge.account_id, self._call_id())], args

    def _keep(
        self, charge: Charge, unchecked: Snapshot | None
    ) -> tuple[Charge, Snapshot | None, list[str], list[Any], float]:
        keys = self._keys
        account = charge.account_id
        usage = keys.usage(account, charge.period.label, charge.environment)
        idem = keys.idempotency(account, charge.idempotency) if charge.idempotency else usage
        state = keys.state(unchecked.account_id, unchecked.kid) if unchecked else usage
        thresholds, idem_ttl, limit_ttl = self._tail
        rate = charge.rate if charge.count_request else None
        args: list[Any] = [
            FIRST,
            CALL_MARKER_TTL,
            charge.kid,
            charge.cost,
            unchecked.version if unchecked else "",
            "" if charge.key_limit is None else charge.key_limit,
            "",  # seed
            "",  # rebuild
            0,  # TTL_ARG
            thresholds,
            idem_ttl,
            limit_ttl,
            "1" if charge.idempotency else "0",
            "1" if charge.count_request else "0",
            self._holder,
            *(("", "") if rate is None else (rate.count, rate.period)),
        ]
        key_rate = usage if rate is None else keys.rate(account, charge.kid)
        # The account's rate limit, if it has one, comes with the limit in force.
        account_rate = keys.rate(account, "@" + charge.environment)
        limit = keys.limit(account, charge.environment)
        call_keys = [usage, limit, idem, state, key_rate, account_rate]
        kept = (charge, unchecked, call_keys, args, charge.period.end.timestamp())
        if charge.idempotency is None:  # an Idempotency-Key's charge serves one request
            if len(self._kept) >= self._size:
                self._kept.clear()  # a bound, like the charges'; busy keys come back at once
            self._kept[id(charge)] = kept
        return kept
