"""Monthly billing periods: months cut at an anchor day, at local midnight in an IANA zone."""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["Period", "PeriodPolicy"]

_UTC = timezone.utc
_TICK = timedelta(microseconds=1)
# [0-9], not \d: \d also matches non-ASCII digits, which int() would happily accept.
_LABEL = re.compile(r"([0-9]{4})-([0-9]{2})")


def _utc(instant: datetime, name: str) -> datetime:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got naive {instant!r}")
    # Compare in UTC only: mixed-zone comparisons of fold/gap times have PEP 495 special cases.
    return instant.astimezone(_UTC)


def _wall(instant: datetime, zone: tzinfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


def _first_instant_from(wall: datetime, zone: tzinfo) -> datetime:
    """The first UTC instant at which clocks in `zone` read `wall` or later."""
    early = wall.replace(tzinfo=zone, fold=0).astimezone(_UTC)  # fold=0: earlier of two readings
    if _wall(early, zone) == wall:
        return early
    # `wall` is in a gap. fold=0 resolves it past the transition, but not onto it when the gap
    # began before `wall` (Toronto 1919: 23:30 -> 00:30). fold=1 lands before the gap; bisect.
    lo, hi = wall.replace(tzinfo=zone, fold=1).astimezone(_UTC), early
    while hi - lo > _TICK:
        mid = lo + (hi - lo) // 2
        if _wall(mid, zone) >= wall:
            hi = mid
        else:
            lo = mid
    return hi


def _load_zone(key: object) -> tzinfo:
    if not isinstance(key, str):
        raise ValueError(f"tz must be an IANA time zone name, got {key!r}")
    if key == "UTC":
        return _UTC  # the default must work on hosts without tz data (Windows without tzdata)
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValueError(f"tz: unknown time zone {key!r}") from exc


@dataclass(frozen=True, slots=True)
class Period:
    start: datetime  # UTC, inclusive
    end: datetime  # UTC, exclusive; the next period's start
    label: str  # "YYYY-MM" of the month whose anchor day opens the period


@dataclass(frozen=True, slots=True)
class PeriodPolicy:
    anchor_day: int = 1
    tz: str = "UTC"
    _zone: tzinfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        day: object = self.anchor_day
        if isinstance(day, bool) or not isinstance(day, int) or not 1 <= day <= 31:
            raise ValueError(f"anchor_day must be an integer from 1 to 31, got {day!r}")
        object.__setattr__(self, "_zone", _load_zone(self.tz))

    # Periods are numbered by month index (year * 12 + month - 1) of their nominal start month.
    def _start(self, index: int) -> datetime:
        year, month = divmod(index, 12)
        month += 1
        day = min(self.anchor_day, calendar.monthrange(year, month)[1])
        return _first_instant_from(datetime(year, month, day), self._zone)

    def _period(self, index: int) -> Period:
        year, month = divmod(index, 12)
        return Period(self._start(index), self._start(index + 1), f"{year:04d}-{month + 1:02d}")

    def _index_at(self, instant: datetime) -> int:
        at = _utc(instant, "instant")
        local = at.astimezone(self._zone)
        index = local.year * 12 + local.month - 1
        # The local month is only a guess: a fall-back can rewind the wall clock into the previous
        # month (St. John's 2009-11-01 00:01 -> 2009-10-31 23:01) after the next period began.
        while self._start(index) > at:
            index -= 1
        while self._start(index + 1) <= at:
            index += 1
        return index

    def _index_of_label(self, label: str) -> int:
        match = _LABEL.fullmatch(label) if isinstance(label, str) else None
        if match is None or int(match[1]) < 1 or not 1 <= int(match[2]) <= 12:
            raise ValueError(f"label must be 'YYYY-MM' with a month from 01 to 12, got {label!r}")
        return int(match[1]) * 12 + int(match[2]) - 1

    def _index_of(self, period: Period) -> int:
        index = self._index_of_label(period.label)
        if self._period(index) != period:
            raise ValueError(f"period {period.label} was not produced by this policy: {self!r}")
        return index

    def period_at(self, instant: datetime) -> Period:
        return self._period(self._index_at(instant))

    def period_for_label(self, label: str) -> Period:
        return self._period(self._index_of_label(label))

    def previous(self, period: Period, n: int = 1) -> Period:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        return self._period(self._index_of(period) - n)

    def next(self, period: Period) -> Period:
        return self._period(self._index_of(period) + 1)
