from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.budget import Budget, BudgetFile
from streams.accounting import TeamState, apply
from streams.budgets import BudgetRegistry, calendars_of, evaluate
from tests.unit.factories import usage_event

HOUR_MS = 3600 * 1000


def budget(**overrides: Any) -> Budget:
    base: dict[str, Any] = {"id": "b1", "team": "research", "tokens": 1000}
    base.update(overrides)
    return Budget.model_validate(base)


def feed(
    budgets: list[Budget], state: TeamState, out_tokens: int, ts: str, n: int = 0,
    cost: Decimal | None = None,
) -> list[Any]:  # fmt: skip
    event = usage_event(event_id=f"e{n}", ts=ts, tokens={"out_visible": out_tokens})
    apply(state, event, cost, calendars_of(budgets), grace_ms=HOUR_MS)
    return evaluate(budgets, state, event, now=datetime(2026, 12, 3, tzinfo=UTC))


def test_thresholds_are_inclusive_and_fire_once() -> None:
    budgets, state = [budget()], TeamState()
    assert feed(budgets, state, 499, "2026-12-03T10:00:00Z") == []
    fired = feed(budgets, state, 1, "2026-12-03T10:01:00Z", 1)
    assert [(b.threshold, b.used, b.severity) for b in fired] == [
        (Decimal("0.5"), Decimal(500), "info")
    ]
    assert feed(budgets, state, 1, "2026-12-03T10:02:00Z", 2) == []


def test_a_jump_fires_every_threshold_in_ascending_order() -> None:
    budgets, state = [budget()], TeamState()
    fired = feed(budgets, state, 5000, "2026-12-03T10:00:00Z")
    assert [b.threshold for b in fired] == [
        Decimal("0.5"),
        Decimal("0.8"),
        Decimal("1.0"),
    ]
    assert [b.severity for b in fired] == ["info", "warning", "critical"]
    assert fired[-1].ratio == Decimal(5)
    assert len({b.breach_id for b in fired}) == 3


def test_breach_ids_are_deterministic_across_replays() -> None:
    first = feed([budget()], TeamState(), 900, "2026-12-03T10:00:00Z")
    again = feed([budget()], TeamState(), 900, "2026-12-03T10:00:00Z")
    assert [b.breach_id for b in first] == [b.breach_id for b in again]


def test_new_day_in_budget_zone_fires_again() -> None:
    budgets = [budget(timezone="Europe/Berlin")]
    state = TeamState()
    day_one = feed(budgets, state, 600, "2026-12-02T22:59:00Z")  # 23:59 Berlin
    day_two = feed(budgets, state, 600, "2026-12-02T23:00:00Z", 1)  # 00:00 Berlin
    assert len(day_one) == len(day_two) == 1
    assert day_two[0].period_start.isoformat() == "2026-12-03T00:00:00+01:00"
    assert day_one[0].breach_id != day_two[0].breach_id


def test_usd_measure_uses_cost() -> None:
    budgets = [budget(tokens=None, usd=10, thresholds=[1])]
    state = TeamState()
    assert feed(budgets, state, 1, "2026-12-03T10:00:00Z", cost=Decimal("9.99")) == []
    fired = feed(budgets, state, 1, "2026-12-03T10:00:01Z", 1, cost=Decimal("0.01"))
    assert [(b.measure, b.used) for b in fired] == [("usd", Decimal("10.00"))]


def test_late_event_for_closed_period_counts_in_totals_but_not_period() -> None:
    budgets, state = [budget(period="hour")], TeamState()
    feed(budgets, state, 10, "2026-12-03T10:00:00Z")
    feed(budgets, state, 10, "2026-12-03T12:04:00Z", 1)  # closes 10:00-11:00
    event = usage_event(event_id="late", ts="2026-12-03T10:30:00Z",
                        tokens={"out_visible": 5000})  # fmt: skip
    flags = apply(state, event, None, calendars_of(budgets), grace_ms=HOUR_MS)
    assert flags == ["late_period"]
    assert evaluate(budgets, state, event, now=datetime.now(UTC)) == []
    assert state.total_tokens == 5020
    assert state.events == 3


def test_state_round_trips_through_json() -> None:
    budgets, state = [budget()], TeamState()
    feed(budgets, state, 900, "2026-12-03T10:00:00Z", cost=Decimal("0.123456789012"))
    assert TeamState.from_json(state.to_json()) == state


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"id": "x", "team": "t"}, "needs a `tokens` or `usd` limit"),
        (
            {"id": "x", "team": "t", "tokens": 5, "timezone": "Mars/Base"},
            "unknown timezone",
        ),
        ({"id": "x", "team": "t", "tokens": 5, "period": "fortnight"}, "period"),
        ({"id": "x", "team": "t", "tokens": -5}, "greater than 0"),
        ({"id": "x", "team": "t", "tokens": 5, "surprise": 1}, "Extra inputs"),
    ],
)
def test_invalid_budgets_are_rejected(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Budget.model_validate(spec)


def test_budget_ids_must_be_unique() -> None:
    with pytest.raises(ValidationError, match="more than once"):
        BudgetFile.model_validate({"budgets": [budget().model_dump()] * 2})


def test_registry_indexes_by_team() -> None:
    registry = BudgetRegistry()
    registry.put(budget(id="a"))
    registry.put(budget(id="b", team="other"))
    registry.put(budget(id="a", team="other"))
    assert sorted(b.id for b in registry.for_team("other")) == ["a", "b"]
    assert registry.for_team("research") == []
    registry.remove("a")
    assert [b.id for b in registry.all()] == ["b"]


def test_a_budget_removed_and_readded_mid_period_sees_the_whole_period() -> None:
    state = TeamState()
    berlin = [budget(timezone="Europe/Berlin", thresholds=[1])]
    assert feed(berlin, state, 500, "2026-12-03T09:00:00Z") == []
    assert feed([], state, 499, "2026-12-03T09:10:00Z", 1) == []  # budget removed
    fired = feed(berlin, state, 1, "2026-12-03T09:20:00Z", 2)  # and re-added
    assert [(b.used, b.triggering_event_id) for b in fired] == [(Decimal(1000), "e2")]
