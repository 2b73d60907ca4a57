"""Calendar periods in a timezone, computed by us (DST-correct).

A period is a half-open interval [start, end) of local calendar time. A day in
Europe/Berlin on the spring-forward Sunday lasts 23 hours and on the fall-back
Sunday 25; it is still one day. Boundaries are computed in the local calendar and
then resolved to instants, never by adding fixed seconds to a UTC instant.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from schemas.budget import PeriodKind


@dataclass(frozen=True, slots=True)
class Period:
    """One calendar period: [start, end) as aware datetimes in its zone."""

    kind: PeriodKind
    timezone: str
    start: datetime
    end: datetime

    @property
    def key(self) -> str:
        """Stable identity: zone, kind and local start with its offset."""
        return f"{self.timezone}|{self.kind}|{self.start.isoformat()}"

    @property
    def end_ms(self) -> int:
        """End of the period in UTC epoch milliseconds (exclusive)."""
        return int(self.end.timestamp() * 1000)


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    """A cached ZoneInfo for an IANA name."""
    return ZoneInfo(name)


def _local_midnight(day: date, tz: ZoneInfo) -> datetime:
    # Where midnight does not exist (a DST jump at 00:00), the first instant of
    # the day is whatever 00:00 resolves to; normalising through UTC gives it.
    naive = datetime.combine(day, time(0), tzinfo=tz)
    return naive.astimezone(UTC).astimezone(tz)


def _resolutions(wall: datetime, tz: ZoneInfo) -> set[datetime]:
    """The instants (UTC) a local wall-clock time can mean: one, or two in a
    repeated stretch."""
    return {wall.replace(tzinfo=tz, fold=f).astimezone(UTC) for f in (0, 1)}


def _local_hour(instant: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """[start, end) in UTC of the local clock hour holding `instant`.

    Boundaries are the instants whose local time is on the hour. Around a DST
    change that is not a whole hour (Lord Howe's 30 minutes), one such "hour"
    runs 30 minutes longer or shorter, as a DST day runs 23 or 25 hours.
    """
    moment = instant.astimezone(UTC)
    wall = instant.astimezone(tz).replace(
        tzinfo=None, minute=0, second=0, microsecond=0
    )
    # Wall hours near the floored one, each meaning one or two instants; the
    # latest at or before the instant starts the period, the next one ends it.
    near = sorted(
        t
        for step in (-1, 0, 1, 2)
        for t in _resolutions(wall + timedelta(hours=step), tz)
    )
    start = max(t for t in near if t <= moment)
    end = min(t for t in near if t > moment)
    return start, end


def _add_months(day: date, months: int) -> date:
    index = day.year * 12 + (day.month - 1) + months
    return date(index // 12, index % 12 + 1, 1)


def period_of(
    instant: datetime, kind: PeriodKind, timezone: str, *, week_start: int = 0
) -> Period:
    """The period of `kind` in `timezone` that contains `instant` (aware)."""
    tz = zone(timezone)
    local = instant.astimezone(tz)
    if kind == "hour":
        start, end = _local_hour(instant, tz)
        return Period(kind, timezone, start.astimezone(tz), end.astimezone(tz))
    if kind == "day":
        first = local.date()
        following = first + timedelta(days=1)
    elif kind == "week":
        first = local.date() - timedelta(days=(local.weekday() - week_start) % 7)
        following = first + timedelta(days=7)
    else:
        first = local.date().replace(day=1)
        following = _add_months(first, 1)
    return Period(
        kind, timezone, _local_midnight(first, tz), _local_midnight(following, tz)
    )
