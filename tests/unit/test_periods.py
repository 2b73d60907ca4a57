from datetime import UTC, datetime, timedelta

import pytest

from schemas.budget import PeriodKind
from streams.periods import period_of


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("instant", "kind", "tz", "start", "hours"),
    [
        # Berlin spring forward 2026-03-29: a 23-hour day.
        (utc(2026, 3, 29, 12), "day", "Europe/Berlin", "2026-03-29T00:00:00+01:00", 23),
        # Berlin fall back 2026-10-25: a 25-hour day.
        (
            utc(2026, 10, 25, 12),
            "day",
            "Europe/Berlin",
            "2026-10-25T00:00:00+02:00",
            25,
        ),
        # 23:30 UTC on the 2nd is already the 3rd in Berlin.
        (
            utc(2026, 12, 2, 23, 30),
            "day",
            "Europe/Berlin",
            "2026-12-03T00:00:00+01:00",
            24,
        ),
        # New York's day starts at 05:00 UTC in winter.
        (
            utc(2026, 12, 3, 4, 59),
            "day",
            "America/New_York",
            "2026-12-02T00:00:00-05:00",
            24,
        ),
        # Month of March in Berlin spans the DST change: 743 hours.
        (utc(2026, 3, 15), "month", "Europe/Berlin", "2026-03-01T00:00:00+01:00", 743),
        # A week starting Monday.
        (utc(2026, 12, 3, 10), "week", "UTC", "2026-11-30T00:00:00+00:00", 168),
        # Kolkata's local hours start at :30 past UTC hours.
        (
            utc(2026, 12, 3, 10, 10),
            "hour",
            "Asia/Kolkata",
            "2026-12-03T15:00:00+05:30",
            1,
        ),
        # Fall back in New York: the repeated 01:00 hour is two distinct hours.
        (
            utc(2026, 11, 1, 5, 30),
            "hour",
            "America/New_York",
            "2026-11-01T01:00:00-04:00",
            1,
        ),
        (
            utc(2026, 11, 1, 6, 30),
            "hour",
            "America/New_York",
            "2026-11-01T01:00:00-05:00",
            1,
        ),
    ],
)
def test_period_bounds(
    instant: datetime, kind: str, tz: str, start: str, hours: int
) -> None:
    period = period_of(instant, kind, tz)  # type: ignore[arg-type]
    assert period.start.isoformat() == start
    # Same-zone datetime subtraction is wall-clock arithmetic; compare instants.
    assert period.end.astimezone(UTC) - period.start.astimezone(UTC) == timedelta(
        hours=hours
    )
    assert period.start <= instant < period.end


def test_week_start_is_configurable() -> None:
    period = period_of(utc(2026, 12, 3, 10), "week", "UTC", week_start=6)
    assert period.start.isoformat() == "2026-11-29T00:00:00+00:00"


def test_periods_partition_time_without_gaps() -> None:
    instant = utc(2026, 10, 24, 0)
    kinds: tuple[PeriodKind, ...] = ("hour", "day")
    for kind in kinds:
        period = period_of(instant, kind, "Europe/Berlin")
        for _ in range(60):
            following = period_of(period.end, kind, "Europe/Berlin")
            assert following.start == period.end
            period = following


def test_keys_differ_for_repeated_local_hour() -> None:
    first = period_of(utc(2026, 11, 1, 5, 30), "hour", "America/New_York")
    second = period_of(utc(2026, 11, 1, 6, 30), "hour", "America/New_York")
    assert first.key != second.key


@pytest.mark.parametrize(
    "tz", ["Australia/Lord_Howe", "Pacific/Chatham", "Asia/Kathmandu"]
)
def test_hours_contain_their_instant_in_odd_offset_zones(tz: str) -> None:
    instant = utc(2026, 1, 1)
    while instant < utc(2027, 1, 1):
        period = period_of(instant, "hour", tz)
        assert period.start <= instant < period.end, (tz, instant)
        length = period.end.astimezone(UTC) - period.start.astimezone(UTC)
        assert timedelta(minutes=30) <= length <= timedelta(minutes=90)
        instant += timedelta(minutes=13)


def test_lord_howe_hour_after_its_half_hour_fall_back() -> None:
    # 15:00Z on 2026-04-04: Lord Howe goes from +11 to +10:30 at 02:00 local.
    period = period_of(utc(2026, 4, 4, 15, 1), "hour", "Australia/Lord_Howe")
    assert period.start.astimezone(UTC) == utc(2026, 4, 4, 14)
    assert period.end.astimezone(UTC) == utc(2026, 4, 4, 15, 30)
