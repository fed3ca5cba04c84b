from __future__ import annotations

from calendar import monthrange
from datetime import datetime, timedelta, timezone
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from keystile._core.periods import Period, PeriodPolicy

UTC = timezone.utc
US = timedelta(microseconds=1)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


def local_wall(instant: datetime, tz: str) -> datetime:
    return instant.astimezone(ZoneInfo(tz)).replace(tzinfo=None)


def midnight_exists(tz: str, year: int, month: int, day: int) -> bool:
    wall = datetime(year, month, day)
    # Through UTC: astimezone() into the datetime's own tzinfo is a no-op.
    return local_wall(wall.replace(tzinfo=ZoneInfo(tz)).astimezone(UTC), tz) == wall


# --- UTC calendar months -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instant", "label", "start", "end"),
    [
        (utc(2026, 11, 30, 23, 59, 59, 999999), "2026-11", utc(2026, 11, 1), utc(2026, 12, 1)),
        (utc(2026, 12, 1), "2026-12", utc(2026, 12, 1), utc(2027, 1, 1)),
        (utc(2026, 12, 31, 23, 59, 59, 999999), "2026-12", utc(2026, 12, 1), utc(2027, 1, 1)),
        (utc(2027, 1, 1), "2027-01", utc(2027, 1, 1), utc(2027, 2, 1)),
        (utc(2024, 2, 29, 12), "2024-02", utc(2024, 2, 1), utc(2024, 3, 1)),
        (utc(2024, 2, 29, 23, 59, 59, 999999), "2024-02", utc(2024, 2, 1), utc(2024, 3, 1)),
    ],
)
def test_default_policy_is_utc_calendar_months(
    instant: datetime, label: str, start: datetime, end: datetime
) -> None:
    assert PeriodPolicy().period_at(instant) == Period(start, end, label)


def test_instant_in_other_zone_is_judged_by_its_utc_value() -> None:
    plus_one = timezone(timedelta(hours=1))
    # 00:30 on Dec 1 at +01:00 is still Nov 30 in UTC.
    assert (
        PeriodPolicy().period_at(datetime(2026, 12, 1, 0, 30, tzinfo=plus_one)).label == "2026-11"
    )


def test_period_bounds_are_utc() -> None:
    p = PeriodPolicy(tz="Asia/Kolkata").period_at(utc(2026, 6, 10))
    assert p.start.utcoffset() == timedelta(0)
    assert p.end.utcoffset() == timedelta(0)


# --- anchor days ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("anchor", "year", "feb_day"),
    [
        (29, 2024, 29),
        (30, 2024, 29),
        (31, 2024, 29),
        (29, 2026, 28),
        (30, 2026, 28),
        (31, 2026, 28),
        (31, 2000, 29),  # divisible by 400: leap
        (31, 2100, 28),  # divisible by 100 only: not leap
    ],
)
def test_anchor_day_is_clamped_in_february(anchor: int, year: int, feb_day: int) -> None:
    policy = PeriodPolicy(anchor_day=anchor)
    feb = policy.period_for_label(f"{year}-02")
    assert feb.start == utc(year, 2, feb_day)
    # March has 31 days, so the anchor applies unclamped again.
    assert feb.end == utc(year, 3, anchor)
    assert policy.period_at(utc(year, 2, feb_day) - US).label == f"{year}-01"
    assert policy.period_at(utc(year, 2, feb_day)).label == f"{year}-02"


def test_anchor_31_recovers_after_short_months() -> None:
    policy = PeriodPolicy(anchor_day=31)
    p = policy.period_for_label("2026-01")
    starts = []
    for _ in range(6):
        starts.append(p.start)
        p = policy.next(p)
    assert starts == [
        utc(2026, 1, 31),
        utc(2026, 2, 28),
        utc(2026, 3, 31),
        utc(2026, 4, 30),
        utc(2026, 5, 31),
        utc(2026, 6, 30),
    ]


def test_leap_day_with_anchor_29() -> None:
    policy = PeriodPolicy(anchor_day=29)
    assert policy.period_at(utc(2024, 2, 29)) == Period(
        utc(2024, 2, 29), utc(2024, 3, 29), "2024-02"
    )
    assert policy.period_at(utc(2024, 2, 28, 23, 59)).label == "2024-01"


def test_anchor_15_label_is_the_month_the_period_starts_in() -> None:
    policy = PeriodPolicy(anchor_day=15)
    p = policy.period_at(utc(2026, 3, 10))
    assert p == Period(utc(2026, 2, 15), utc(2026, 3, 15), "2026-02")
    assert policy.period_at(utc(2026, 3, 14, 23, 59, 59, 999999)).label == "2026-02"
    assert policy.period_at(utc(2026, 3, 15)).label == "2026-03"
    assert policy.period_at(utc(2026, 1, 14)).label == "2025-12"


# --- time zones -----------------------------------------------------------------------------


def test_new_york_across_march_dst_start() -> None:
    policy = PeriodPolicy(tz="America/New_York")
    p = policy.period_at(utc(2026, 3, 15))
    assert p.label == "2026-03"
    assert p.start == utc(2026, 3, 1, 5)  # 00:00 EST
    assert p.end == utc(2026, 4, 1, 4)  # 00:00 EDT
    assert local_wall(p.start, "America/New_York") == datetime(2026, 3, 1)
    assert local_wall(p.end, "America/New_York") == datetime(2026, 4, 1)
    assert p.end - p.start == timedelta(days=31, hours=-1)


def test_new_york_across_november_dst_end() -> None:
    policy = PeriodPolicy(tz="America/New_York")
    p = policy.period_for_label("2026-11")
    assert p.start == utc(2026, 11, 1, 4)  # 00:00 EDT, two hours before the fall-back
    assert p.end == utc(2026, 12, 1, 5)  # 00:00 EST
    assert p.end - p.start == timedelta(days=30, hours=1)
    assert policy.period_at(utc(2026, 11, 1, 3, 59, 59)).label == "2026-10"  # Oct 31 23:59:59 EDT
    assert policy.period_at(utc(2026, 11, 1, 4)).label == "2026-11"
    assert policy.period_at(utc(2026, 12, 1, 4, 59)).label == "2026-11"  # Nov 30 23:59 EST


def test_berlin() -> None:
    policy = PeriodPolicy(anchor_day=1, tz="Europe/Berlin")
    p = policy.period_for_label("2026-03")
    assert p.start == utc(2026, 2, 28, 23)  # 00:00 CET
    assert p.end == utc(2026, 3, 31, 22)  # 00:00 CEST
    assert policy.period_at(utc(2026, 3, 31, 22, 30)).label == "2026-04"
    assert policy.period_at(utc(2026, 3, 31, 21, 59)).label == "2026-03"


def test_auckland_is_ahead_of_utc() -> None:
    policy = PeriodPolicy(tz="Pacific/Auckland")
    assert policy.period_at(utc(2025, 12, 31, 11)).label == "2026-01"  # Jan 1 00:00 NZDT
    assert policy.period_at(utc(2025, 12, 31, 10, 59)).label == "2025-12"
    april = policy.period_for_label("2026-04")  # NZ DST ends Apr 5 2026
    assert april.start == utc(2026, 3, 31, 11)  # +13
    assert april.end == utc(2026, 4, 30, 12)  # +12


def test_kolkata_half_hour_offset() -> None:
    policy = PeriodPolicy(anchor_day=15, tz="Asia/Kolkata")
    p = policy.period_for_label("2026-06")
    assert p.start == utc(2026, 6, 14, 18, 30)
    assert p.end == utc(2026, 7, 14, 18, 30)
    assert policy.period_at(utc(2026, 6, 14, 18, 29, 59)).label == "2026-05"
    assert policy.period_at(utc(2026, 6, 14, 18, 30)).label == "2026-06"


# --- midnight that does not exist, or exists twice ---------------------------------------------


@pytest.mark.parametrize(
    ("tz", "date", "start", "local_start"),
    [
        # Clocks jump 00:00 -> 01:00.
        ("America/Santiago", (2022, 9, 11), utc(2022, 9, 11, 4), datetime(2022, 9, 11, 1)),
        ("America/Havana", (2023, 3, 12), utc(2023, 3, 12, 5), datetime(2023, 3, 12, 1)),
        ("Asia/Beirut", (2023, 3, 26), utc(2023, 3, 25, 22), datetime(2023, 3, 26, 1)),
        # 23:30 -> 00:30: the gap starts before midnight, so the first instant is 00:30, not 01:00.
        ("America/Toronto", (1919, 3, 31), utc(1919, 3, 31, 4, 30), datetime(1919, 3, 31, 0, 30)),
        # A whole day skipped across the date line.
        ("Pacific/Apia", (2011, 12, 30), utc(2011, 12, 30, 10), datetime(2011, 12, 31)),
    ],
)
def test_skipped_midnight_starts_at_first_existing_instant(
    tz: str, date: tuple[int, int, int], start: datetime, local_start: datetime
) -> None:
    year, month, day = date
    assert not midnight_exists(tz, year, month, day)
    policy = PeriodPolicy(anchor_day=day, tz=tz)
    p = policy.period_for_label(f"{year}-{month:02d}")
    assert p.start == start
    assert local_wall(p.start, tz) == local_start
    assert local_wall(p.start - US, tz) < datetime(year, month, day)  # nothing earlier qualifies
    assert policy.period_at(p.start - US).end == p.start
    assert policy.period_at(p.start) == p


def test_skipped_day_keeps_its_label() -> None:
    # Kiritimati skipped 1994-12-31 entirely, so the December period opens on local Jan 1;
    # its label stays "1994-12" (the month whose anchor defines it), otherwise two would clash.
    tz = "Pacific/Kiritimati"
    assert not midnight_exists(tz, 1994, 12, 31)
    policy = PeriodPolicy(anchor_day=31, tz=tz)
    dec = policy.period_for_label("1994-12")
    assert dec.start == utc(1994, 12, 31, 10)
    assert local_wall(dec.start, tz) == datetime(1995, 1, 1)
    assert policy.next(dec).label == "1995-01"
    assert local_wall(policy.next(dec).start, tz) == datetime(1995, 1, 31)
    assert policy.period_at(utc(1994, 12, 31, 12)) == dec


def test_ambiguous_midnight_takes_the_earlier_instant() -> None:
    # Havana falls back 01:00 -> 00:00 on 2022-11-06, so 00:00 happens at 04:00Z and 05:00Z.
    policy = PeriodPolicy(anchor_day=6, tz="America/Havana")
    p = policy.period_for_label("2022-11")
    assert p.start == utc(2022, 11, 6, 4)
    assert policy.period_at(utc(2022, 11, 6, 4, 30)) == p
    assert policy.period_at(utc(2022, 11, 6, 3, 59)).label == "2022-10"


def test_fall_back_into_previous_month_stays_in_new_period() -> None:
    # St. John's fell back 2009-11-01 00:01 NDT -> 2009-10-31 23:01 NST: instants whose wall
    # clock reads October again are already in the November period.
    tz = "America/St_Johns"
    policy = PeriodPolicy(tz=tz)
    nov = policy.period_for_label("2009-11")
    assert nov.start == utc(2009, 11, 1, 2, 30)  # first 00:00, at -02:30
    rewound = utc(2009, 11, 1, 3)
    assert local_wall(rewound, tz) == datetime(2009, 10, 31, 23, 30)
    assert policy.period_at(rewound) == nov
    assert policy.period_at(nov.start - US).label == "2009-10"


SWEEP_ZONES = [
    "UTC",
    "America/New_York",
    "Europe/Berlin",
    "Pacific/Auckland",
    "Asia/Kolkata",
    "America/Santiago",
    "America/Havana",
    "Asia/Beirut",
    "America/St_Johns",
    "Australia/Lord_Howe",
]


@pytest.mark.parametrize("tz", SWEEP_ZONES)
@pytest.mark.parametrize("anchor", [1, 11, 15, 28, 29, 30, 31])
def test_sweep_periods_are_contiguous_and_start_at_local_midnight(tz: str, anchor: int) -> None:
    policy = PeriodPolicy(anchor_day=anchor, tz=tz)
    p = policy.period_for_label("2019-01")
    for index in range(2019 * 12, 2027 * 12):
        year, month = divmod(index, 12)
        assert p.label == f"{year:04d}-{month + 1:02d}"
        assert p.start < p.end
        assert policy.period_at(p.start) == p
        assert policy.period_at(p.end - US) == p
        assert policy.period_at(p.end).start == p.end
        assert policy.period_for_label(p.label) == p
        nominal = datetime(year, month + 1, min(anchor, monthrange(year, month + 1)[1]))
        wall = local_wall(p.start, tz)
        if wall != nominal:  # only allowed when local midnight was skipped
            assert not midnight_exists(tz, nominal.year, nominal.month, nominal.day)
            assert nominal < wall < nominal + timedelta(hours=2)
            assert local_wall(p.start - US, tz) < nominal
        nxt = policy.next(p)
        assert nxt.start == p.end
        p = nxt


@pytest.mark.parametrize("tz", ["America/New_York", "America/Santiago", "America/St_Johns"])
@pytest.mark.parametrize("anchor", [1, 30])
def test_sweep_instants_fall_in_their_period(tz: str, anchor: int) -> None:
    policy = PeriodPolicy(anchor_day=anchor, tz=tz)
    instant, stop = utc(2008, 1, 1), utc(2011, 1, 1)
    step = timedelta(hours=7, minutes=13, seconds=17)
    previous: Period | None = None
    while instant < stop:
        p = policy.period_at(instant)
        assert p.start <= instant < p.end
        if previous is not None and previous != p:
            assert p.start == previous.end  # no period is skipped
        previous = p
        instant += step


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, 32, -1, True, False, "5", 1.0, None])
def test_bad_anchor_day(bad: object) -> None:
    with pytest.raises(ValueError, match="anchor_day must be an integer from 1 to 31"):
        PeriodPolicy(anchor_day=bad)  # type: ignore[arg-type]


def test_bad_tz() -> None:
    with pytest.raises(ValueError, match=r"^tz: unknown time zone 'Mars/Base'$"):
        PeriodPolicy(tz="Mars/Base")


@pytest.mark.parametrize("bad", ["", "utc", "America", "../etc/passwd", "/etc/localtime", 5, None])
def test_other_bad_tz(bad: object) -> None:
    with pytest.raises(ValueError, match=r"^tz"):
        PeriodPolicy(tz=bad)  # type: ignore[arg-type]


def test_naive_datetimes_rejected() -> None:
    policy = PeriodPolicy()
    naive = datetime(2026, 1, 1)
    with pytest.raises(ValueError, match="timezone-aware"):
        policy.period_at(naive)


def test_policy_value_semantics() -> None:
    assert PeriodPolicy(15, "Europe/Berlin") == PeriodPolicy(anchor_day=15, tz="Europe/Berlin")
    assert len({PeriodPolicy(), PeriodPolicy(1, "UTC")}) == 1
    assert repr(PeriodPolicy()) == "PeriodPolicy(anchor_day=1, tz='UTC')"


# --- labels ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "policy",
    [PeriodPolicy(), PeriodPolicy(31, "Pacific/Auckland"), PeriodPolicy(15, "Asia/Kolkata")],
)
@pytest.mark.parametrize("label", ["2024-02", "2026-01", "2026-12", "1999-07"])
def test_period_for_label_round_trip(policy: PeriodPolicy, label: str) -> None:
    p = policy.period_for_label(label)
    assert p.label == label
    assert policy.period_at(p.start) == p
    assert policy.period_for_label(policy.period_at(p.end - US).label) == p


def test_period_for_label_values() -> None:
    assert PeriodPolicy().period_for_label("2026-02") == Period(
        utc(2026, 2, 1), utc(2026, 3, 1), "2026-02"
    )


@pytest.mark.parametrize(
    "bad",
    [
        "2026-13",
        "2026-00",
        "26-01",
        "abc",
        "",
        "2026-1",
        "2026-01 ",
        "2026/01",
        "0000-01",
        "２０２６-01",
        202601,
        None,
    ],
)
def test_bad_labels(bad: object) -> None:
    with pytest.raises(ValueError, match="label"):
        PeriodPolicy().period_for_label(bad)  # type: ignore[arg-type]


# --- navigation -----------------------------------------------------------------------------


def test_previous_and_next() -> None:
    policy = PeriodPolicy(anchor_day=15)
    p = policy.period_for_label("2026-01")
    assert policy.previous(p).label == "2025-12"
    assert policy.previous(p).end == p.start
    assert policy.previous(p, 0) == p
    assert policy.previous(p, 12).label == "2025-01"
    assert policy.previous(p, 25).label == "2023-12"
    assert policy.next(p).label == "2026-02"
    assert policy.next(p).start == p.end
    assert policy.next(policy.previous(p)) == p
    assert policy.next(policy.period_for_label("2026-12")).label == "2027-01"


def test_previous_rejects_bad_n() -> None:
    policy = PeriodPolicy()
    p = policy.period_for_label("2026-01")
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="n must be"):
            policy.previous(p, bad)  # type: ignore[arg-type]


def test_navigation_rejects_foreign_periods() -> None:
    p = PeriodPolicy(tz="Europe/Berlin").period_for_label("2026-01")
    with pytest.raises(ValueError, match="not produced by this policy"):
        PeriodPolicy().next(p)
    with pytest.raises(ValueError, match="not produced by this policy"):
        PeriodPolicy(anchor_day=2, tz="Europe/Berlin").previous(p)


def test_previous_periods_chain_back_from_the_current_one() -> None:
    policy = PeriodPolicy(anchor_day=15)
    current = policy.period_at(utc(2026, 3, 10))
    periods = [current] + [policy.previous(current, n) for n in range(1, 4)]
    assert [p.label for p in periods] == ["2026-02", "2026-01", "2025-12", "2025-11"]
    assert all(newer.start == older.end for newer, older in pairwise(periods))
    assert current.start <= utc(2026, 3, 10) < current.end
