"""Accounting: per-team counters, all-time and per calendar period.

A team's whole state is one `TeamState`, so the worker writes one table entry
per team per event (or per batch) rather than one per counter. That one entry
also records the last source offset applied and the breaches fired (with their
payloads): a replay after a crash can then tell an event already counted from a
new one, and re-send the outputs that may have been lost, from one atomic write.

Periods are computed by `streams.periods`; a period is closed once the team's event-time
watermark passes its end plus a grace; events for a closed period still count in
the all-time totals (and reach the warehouse) but are flagged `late_period`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from schemas.budget import PeriodKind
from schemas.usage import BUCKETS, UsageEvent
from streams.periods import Period, period_of

PERIOD_KINDS: tuple[PeriodKind, ...] = ("hour", "day", "week", "month")


@dataclass(frozen=True, slots=True)
class Calendar:
    """A family of periods to count in: a zone and the first day of its week."""

    timezone: str
    week_start: int = 0


@dataclass(slots=True)
class Counter:
    """Usage inside one period: tokens and known cost in USD."""

    end_ms: int
    tokens: int = 0
    usd: Decimal = Decimal(0)
    events: int = 0


@dataclass(slots=True)
class Fired:
    """A breach fired in an open period: where it came from, and what was sent."""

    end_ms: int
    partition: int
    offset: int
    payload: dict[str, Any]


@dataclass(slots=True)
class TeamState:
    """Everything the worker knows about one team."""

    events: int = 0
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BUCKETS, 0))
    usd: Decimal = Decimal(0)
    unknown_cost_events: int = 0
    watermark_ms: int = 0
    periods: dict[str, Counter] = field(default_factory=dict)
    fired: dict[str, Fired] = field(default_factory=dict)
    offsets: dict[int, int] = field(default_factory=dict)
    #: Every calendar a budget of this team has used: counting goes on in them
    #: when a budget is removed, so one re-added mid-period sees the whole period.
    calendars: set[Calendar] = field(default_factory=lambda: {Calendar("UTC")})

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens.values())

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (Decimals as strings)."""
        return {
            "events": self.events,
            "tokens": self.tokens,
            "usd": str(self.usd),
            "unknown_cost_events": self.unknown_cost_events,
            "watermark_ms": self.watermark_ms,
            "periods": {
                key: [c.end_ms, c.tokens, str(c.usd), c.events]
                for key, c in self.periods.items()
            },
            "fired": {
                k: [f.end_ms, f.partition, f.offset, f.payload]
                for k, f in self.fired.items()
            },
            "offsets": {str(p): o for p, o in self.offsets.items()},
            "calendars": sorted([c.timezone, c.week_start] for c in self.calendars),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TeamState:
        """The inverse of `to_json`."""
        return cls(
            events=int(data["events"]),
            tokens={b: int(data["tokens"].get(b, 0)) for b in BUCKETS},
            usd=Decimal(data["usd"]),
            unknown_cost_events=int(data["unknown_cost_events"]),
            watermark_ms=int(data["watermark_ms"]),
            periods={
                key: Counter(int(v[0]), int(v[1]), Decimal(v[2]), int(v[3]))
                for key, v in data["periods"].items()
            },
            fired={
                k: Fired(int(v[0]), int(v[1]), int(v[2]), v[3])
                for k, v in data["fired"].items()
            },
            offsets={int(p): int(o) for p, o in data.get("offsets", {}).items()},
            calendars={
                Calendar(str(tz), int(week))
                for tz, week in data.get("calendars", [["UTC", 0]])
            },
        )

    def applied(self, partition: int, offset: int) -> bool:
        """Whether the record at `offset` of `partition` is already counted."""
        return offset <= self.offsets.get(partition, -1)

    def mark_applied(self, partition: int, offset: int) -> None:
        """Record that the record at `offset` of `partition` is counted."""
        self.offsets[partition] = max(offset, self.offsets.get(partition, -1))

    def breaches_from(self, partition: int, offset: int) -> list[dict[str, Any]]:
        """Payloads of the breaches the record at `offset` fired (for a replay)."""
        return [
            f.payload
            for f in self.fired.values()
            if f.partition == partition and f.offset == offset
        ]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def to_ms(instant: datetime) -> int:
    """UTC epoch milliseconds of an aware datetime, rounded down (as ClickHouse)."""
    return (instant - _EPOCH) // _MS


def periods_for(instant: datetime, calendars: set[Calendar]) -> list[Period]:
    """Every period of every kind, in every calendar, that contains `instant`."""
    return [
        period_of(instant, kind, cal.timezone, week_start=cal.week_start)
        for cal in sorted(calendars, key=lambda c: (c.timezone, c.week_start))
        for kind in PERIOD_KINDS
    ]


def apply(
    state: TeamState,
    event: UsageEvent,
    cost_usd: Decimal | None,
    calendars: set[Calendar],
    *,
    grace_ms: int,
) -> list[str]:
    """Add `event` to `state`, counting in `calendars` (those of the team's
    budgets) and every calendar the team counted in before; returns flags
    (`late_period`) for the event."""
    state.calendars.update(calendars)
    flags: list[str] = []
    state.events += 1
    for bucket in BUCKETS:
        state.tokens[bucket] += getattr(event.tokens, bucket)
    if cost_usd is None:
        state.unknown_cost_events += 1
    else:
        state.usd += cost_usd

    total = event.tokens.total
    for period in periods_for(event.ts, state.calendars):
        counter = state.periods.get(period.key)
        if counter is None:
            if period.end_ms + grace_ms <= state.watermark_ms:
                if "late_period" not in flags:
                    flags.append("late_period")
                continue
            counter = state.periods[period.key] = Counter(period.end_ms)
        counter.tokens += total
        counter.usd += cost_usd or 0
        counter.events += 1

    state.watermark_ms = max(state.watermark_ms, to_ms(event.ts))
    expire(state, grace_ms=grace_ms)
    return flags


def expire(state: TeamState, *, grace_ms: int) -> None:
    """Forget periods (and their fired breaches) closed by the watermark."""
    horizon = state.watermark_ms - grace_ms
    for key in [k for k, c in state.periods.items() if c.end_ms <= horizon]:
        del state.periods[key]
    for key in [k for k, f in state.fired.items() if f.end_ms <= horizon]:
        del state.fired[key]
