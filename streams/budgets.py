"""Budget evaluation: which thresholds an event pushed a team's usage across.

Each threshold fires exactly once per (budget, period, measure, threshold): the
`breach_id` is derived from those four, and fired ids are kept in the team's
state until the period closes. Thresholds are inclusive (used >= t x limit) and
a jump across several fires each, lowest first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal

from schemas.breach import BreachEvent, Measure
from schemas.budget import Budget, severity_for
from schemas.usage import UsageEvent
from streams.accounting import Calendar, Fired, TeamState
from streams.periods import Period, period_of


def calendars_of(budgets: Iterable[Budget]) -> set[Calendar]:
    """The calendars a team's budgets count in, plus UTC for the live view."""
    out = {Calendar("UTC")}
    out.update(Calendar(b.timezone, b.week_start) for b in budgets)
    return out


def breach_id(budget_id: str, period: Period, measure: str, threshold: Decimal) -> str:
    """Deterministic id of one (budget, period, measure, threshold) crossing."""
    basis = "|".join((budget_id, period.start.isoformat(), measure, _plain(threshold)))
    return hashlib.sha256(basis.encode()).hexdigest()[:32]


def _plain(value: Decimal) -> str:
    return format(value.normalize(), "f")


def evaluate(
    budgets: Iterable[Budget],
    state: TeamState,
    event: UsageEvent,
    *,
    now: datetime,
    origin: tuple[int, int] = (-1, -1),
) -> list[BreachEvent]:
    """Breaches newly crossed after `event` was applied to `state`.

    Records each returned breach as fired in `state`, with `origin` (the source
    partition and offset of the event) so a replay can re-send it.
    """
    out: list[BreachEvent] = []
    for budget in sorted(budgets, key=lambda b: b.id):
        period = period_of(
            event.ts, budget.period, budget.timezone, week_start=budget.week_start
        )
        counter = state.periods.get(period.key)
        if counter is None:
            continue  # a late event for a closed period
        used_by: dict[Measure, Decimal] = {
            "tokens": Decimal(counter.tokens),
            "usd": counter.usd,
        }
        for measure, limit in budget.limits().items():
            used = used_by[measure]
            for threshold in budget.thresholds:
                if used < threshold * limit:
                    break
                bid = breach_id(budget.id, period, measure, threshold)
                if bid in state.fired:
                    continue
                breach = BreachEvent(
                    breach_id=bid,
                    budget_id=budget.id,
                    team=budget.team,
                    period=budget.period,
                    timezone=budget.timezone,
                    period_start=period.start,
                    period_end=period.end,
                    measure=measure,
                    threshold=threshold,
                    limit=limit,
                    used=used,
                    ratio=(used / limit).quantize(Decimal("0.000001")),
                    severity=severity_for(threshold),
                    triggering_event_id=event.event_id,
                    event_ts=event.ts,
                    detected_at=now,
                )
                state.fired[bid] = Fired(
                    period.end_ms, *origin, breach.model_dump(mode="json")
                )
                out.append(breach)
    return out


class BudgetRegistry:
    """The budgets in force, as read from the compacted budgets topic."""

    def __init__(self) -> None:
        self._by_id: dict[str, Budget] = {}
        self._by_team: dict[str, list[Budget]] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def all(self) -> list[Budget]:
        """Every budget in force, by id."""
        return [self._by_id[k] for k in sorted(self._by_id)]

    def for_team(self, team: str) -> list[Budget]:
        """The budgets that count `team`'s usage."""
        return self._by_team.get(team, [])

    def put(self, budget: Budget) -> None:
        """Add or replace a budget."""
        self._by_id[budget.id] = budget
        self._reindex()

    def remove(self, budget_id: str) -> None:
        """Drop a budget (a tombstone on the topic)."""
        if self._by_id.pop(budget_id, None) is not None:
            self._reindex()

    def _reindex(self) -> None:
        by_team: dict[str, list[Budget]] = {}
        for budget in self._by_id.values():
            by_team.setdefault(budget.team, []).append(budget)
        self._by_team = by_team
