"""``ks.quotas``: account limits and plans, and usage reports per month and key."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from keystile._backends.backends import Backends
from keystile._core.charging import resolve_limit
from keystile._core.errors import BackendError, InvalidInput
from keystile._core.keyfields import check_account, check_page_limit
from keystile._core.localcache import LocalCache
from keystile._core.metering import UsageBuffer
from keystile._core.periods import PeriodPolicy
from keystile._core.ratelimits import check_rate_limit
from keystile._core.store import DEFAULT_PLAN, AccountLimit, UsageRow
from keystile._core.tokens import KEY_ID_PREFIX
from keystile._services.audit import AuditLog


@dataclass(frozen=True, slots=True)
class KeyUsage:
    key_id: str
    pages: int
    requests: int


@dataclass(frozen=True, slots=True)
class MonthUsage:
    month: str
    pages: int
    requests: int


@dataclass(frozen=True, slots=True)
class UsageReport:
    account_id: str
    environment: str
    month: str
    starts_at: datetime
    resets_at: datetime
    limit: int | None
    pages: int
    requests: int
    remaining: int | None
    keys: Sequence[KeyUsage]
    history: Sequence[MonthUsage]  # this month first, then the 11 before it

    def to_dict(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "environment": self.environment,
            "month": self.month,
            "starts_at": self.starts_at.isoformat(),
            "resets_at": self.resets_at.isoformat(),
            "limit": self.limit,
            "pages": self.pages,
            "requests": self.requests,
            "remaining": self.remaining,
            "keys": [
                {"key_id": k.key_id, "pages": k.pages, "requests": k.requests} for k in self.keys
            ],
            "history": [
                {"month": m.month, "pages": m.pages, "requests": m.requests} for m in self.history
            ],
        }


class QuotaManager:
    """``ks.quotas``. ``limits`` and ``buffer`` are admission's: a changed limit leaves its
    cache, and a report counts the charges not yet flushed to the store."""

    def __init__(
        self,
        backends: Backends,
        audit: AuditLog,
        periods: PeriodPolicy,
        limits: LocalCache[AccountLimit | None],
        buffer: UsageBuffer,
    ) -> None:
        self._backends = backends
        self._settings = backends.settings
        self._store = backends.store
        self._audit = audit
        self._periods = periods
        self._limits = limits
        self._buffer = buffer

    def set_limit(self, account_id: str, pages: int | None, actor: str | None = None) -> None:
        """The account's own monthly page limit (None: unlimited, still metered)."""
        check_account("account_id", account_id)
        pages = check_page_limit(pages, "pages")
        self._write(account_id, AccountLimit(pages, None, self._rate_of(account_id)), actor)

    def set_plan(self, account_id: str, plan: str, actor: str | None = None) -> None:
        """Put the account on a plan named in the ``plans`` setting."""
        check_account("account_id", account_id)
        if plan not in self._settings.plans:
            known = ", ".join(sorted(self._settings.plans)) or "none configured"
            raise InvalidInput("plan", f"unknown plan {plan!r} (plans: {known})")
        self._write(account_id, AccountLimit(None, plan, self._rate_of(account_id)), actor)

    def clear_limit(self, account_id: str, actor: str | None = None) -> None:
        """Back to the default ``monthly_page_limit`` (a rate limit stays)."""
        check_account("account_id", account_id)
        rate = self._rate_of(account_id)
        self._write(
            account_id, None if rate is None else AccountLimit(None, DEFAULT_PLAN, rate), actor
        )

    def set_rate_limit(self, account_id: str, rate: str | None, actor: str | None = None) -> None:
        """Requests per second, minute or hour that all the account's keys together may send
        (``"1000/min"``; None: none), beside each key's own ``rate_limit``."""
        check_account("account_id", account_id)
        rate = check_rate_limit("rate", rate)
        row = self._store.get_limit(account_id) or AccountLimit(None, DEFAULT_PLAN)
        kept = replace(row, rate=rate)
        default = kept.plan == DEFAULT_PLAN and rate is None
        self._write(account_id, None if default else kept, actor)

    def rate_limit(self, account_id: str) -> str | None:
        """The account's shared rate limit, or None."""
        return self._rate_of(check_account("account_id", account_id))

    def _rate_of(self, account_id: str) -> str | None:
        row = self._store.get_limit(account_id)
        return None if row is None else row.rate

    def limit(self, account_id: str, environment: str | None = None) -> int | None:
        env = environment or self._settings.environments[0]
        row = self._store.get_limit(account_id)
        return resolve_limit(self._settings, row, env)

    def _write(self, account_id: str, limit: AccountLimit | None, actor: str | None) -> None:
        self._store.set_limit(account_id, limit)
        details: dict[str, Any] = {"pages": None, "plan": None, "default": True}
        if limit is not None:
            default = limit.plan == DEFAULT_PLAN
            plan = None if default else limit.plan
            details = {"pages": limit.pages, "plan": plan, "default": default}
            if limit.rate is not None:
                details["rate"] = limit.rate
        self._audit.record("limit.change", account_id, actor, None, details)
        self._limits.drop(account_id)
        redis = self._backends.redis
        if redis is None:
            return
        try:
            redis.drop_limits(account_id, self._settings.environments)
        except BackendError as exc:
            raise BackendError(
                "saved, but Redis could not be told: the old limit may apply for up to "
                f"cache_ttl={self._settings.cache_ttl}s ({exc})"
            ) from exc

    def usage(
        self, account_id: str, month: str | None = None, environment: str | None = None
    ) -> UsageReport:
        """Totals and per-key breakdown for ``month`` ("YYYY-MM", default this one) and the
        12 months up to it. Includes charges not yet written to the store."""
        check_account("account_id", account_id)
        env = environment or self._settings.environments[0]
        if env not in self._settings.environments:
            raise InvalidInput(
                "environment", f"expected one of {list(self._settings.environments)}"
            )
        policy = self._periods
        if month is None:
            period = policy.period_at(self._backends.clocks.now())
        else:
            try:
                period = policy.period_for_label(month)
            except ValueError:
                raise InvalidInput("month", "expected YYYY-MM, e.g. 2026-11") from None
        try:
            periods = [period] + [policy.previous(period, n) for n in range(1, 12)]
        except ValueError:  # history before year 1
            raise InvalidInput("month", "too early for 12 months of history") from None
        labels = [p.label for p in periods]
        rows = [r for r in self._store.usage(account_id, labels) if r.environment == env]
        for label in labels:
            rows.extend(self._unflushed(account_id, label, env))
        live = self._live_counter(account_id, period.label, env)
        per_key: dict[str, list[int]] = {}
        totals: dict[str, list[int]] = {label: [0, 0] for label in labels}
        for row in rows:
            totals[row.period][0] += row.pages
            totals[row.period][1] += row.requests
            if row.period == period.label:
                counts = per_key.setdefault(row.kid, [0, 0])
                counts[0] += row.pages
                counts[1] += row.requests
        if live is not None:  # Redis is ahead of the store by up to one flush interval
            totals[period.label] = [live.get("pages", 0), live.get("requests", 0)]
            for field, value in live.items():
                if field.startswith("k:"):
                    _, kid, kind = field.split(":")
                    per_key.setdefault(kid, [0, 0])[0 if kind == "pages" else 1] = value
        limit = self.limit(account_id, env)
        pages, requests = totals[period.label]
        return UsageReport(
            account_id=account_id,
            environment=env,
            month=period.label,
            starts_at=period.start,
            resets_at=period.end,
            limit=limit,
            pages=pages,
            requests=requests,
            remaining=None if limit is None else max(0, limit - pages),
            keys=sorted(
                (KeyUsage(KEY_ID_PREFIX + kid, p, r) for kid, (p, r) in per_key.items()),
                key=lambda k: (-k.pages, k.key_id),
            ),
            history=[MonthUsage(label, *totals[label]) for label in labels],
        )

    def _unflushed(self, account_id: str, period: str, env: str) -> list[UsageRow]:
        pending = self._buffer.pending(account_id, period, env)
        return [UsageRow(d.period, d.environment, d.kid, d.pages, d.requests) for d in pending]

    def _live_counter(self, account_id: str, period: str, env: str) -> dict[str, int] | None:
        redis = self._backends.redis
        if redis is None:
            return None
        try:
            raw = redis.counter(account_id, period, env)
        except BackendError:
            return None  # the store's figures, a few seconds behind, are the next best
        return {k: int(v) for k, v in raw.items() if not k.startswith("th:")} or None
