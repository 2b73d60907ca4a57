from datetime import UTC, datetime, timedelta

from schemas.usage import UsageEvent
from streams.simulate import RUNAWAY_FACTOR, Fleet

END = datetime(2026, 12, 3, 12, tzinfo=UTC)


def test_same_seed_same_events() -> None:
    first = list(Fleet(seed=3).events(500, end=END, span=timedelta(hours=1)))
    again = list(Fleet(seed=3).events(500, end=END, span=timedelta(hours=1)))
    other = list(Fleet(seed=4).events(500, end=END, span=timedelta(hours=1)))
    assert first == again
    assert first != other


def test_events_are_valid_and_inside_the_span() -> None:
    events = list(Fleet().events(2000, end=END, span=timedelta(hours=1)))
    assert len({e["event_id"] for e in events}) == 2000
    for raw in events:
        event = UsageEvent.model_validate(raw, context={"now": END})
        assert END - timedelta(hours=1) <= event.ts <= END + timedelta(seconds=1)


def test_the_runaway_agent_dominates() -> None:
    fleet = Fleet(teams=4, agents_per_team=5)
    events = list(fleet.events(5000, end=END, span=timedelta(hours=1)))
    runaway = fleet.agents[0].name
    share = sum(e["agent"] == runaway for e in events) / len(events)
    assert share > 1 / len(fleet.agents) * RUNAWAY_FACTOR / 4
