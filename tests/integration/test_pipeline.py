"""A known set of events through the real broker, worker, sink and warehouse.

Exact expectations: window totals in the worker, the same totals in ClickHouse,
the right dead letters, each breach exactly once, and nothing counted twice
after a worker restart and a full replay of the input.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from kafka import KafkaConsumer

from schemas.budget import BudgetFile
from streams import json
from streams.emit import Emitter
from streams.governance import apply_budgets, read_budgets
from streams.local import Stack, worker_get
from streams.settings import Settings
from streams.simulate import Fleet
from streams.topics import consumer_lag, wait_drained
from streams.warehouse.client import connect

pytestmark = pytest.mark.integration

BERLIN = ZoneInfo("Europe/Berlin")


def last_berlin_midnight_before(instant: datetime) -> datetime:
    local = instant.astimezone(BERLIN)
    midnight = datetime(local.year, local.month, local.day, tzinfo=BERLIN)
    return midnight.astimezone(UTC)


NOW = datetime.now(UTC)
# A Berlin midnight at least 4 hours ago, so every event below is in the past.
MIDNIGHT = last_berlin_midnight_before(NOW - timedelta(hours=4))
# A UTC hour boundary at least 2 hours ago.
HOUR = (NOW - timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)


def ev(
    event_id: str, team: str, at: datetime, out: int, **extra: Any
) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "event_id": event_id,
        "ts": at.isoformat(),
        "team": team,
        "agent": f"{team}-bot",
        "provider": "anthropic",
        "model": "claude-sonnet-4-5",
        "tokens": {"in_uncached": 0, "out_visible": out},
        **extra,
    }


MS = timedelta(milliseconds=1)
GOOD = [
    ev("a1", "alpha", MIDNIGHT - MS, 600),  # the last millisecond of day D-1
    ev("a2", "alpha", MIDNIGHT, 400),  # the first millisecond of day D
    ev("a3", "alpha", MIDNIGHT + timedelta(hours=1), 450),
    ev("a5", "alpha", MIDNIGHT + timedelta(hours=2), 150),  # exactly the limit
    ev("a6", "alpha", MIDNIGHT + timedelta(hours=3), 1),
    ev("b1", "beta", HOUR - MS, 100, model="in-house-llm", provider="self-hosted"),
    ev("b2", "beta", HOUR, 99),
]
DUPLICATES = [
    ev("a3", "alpha", MIDNIGHT + timedelta(hours=1, seconds=5), 450),  # a retry
]
CONFLICT = ev("a2", "alpha", MIDNIGHT, 401)  # same id, other content
FUTURE = NOW + timedelta(hours=1)
BAD: list[tuple[bytes, bytes, str]] = [
    (b"alpha", b"\xff\xfegarbage", "not_utf8"),
    (b"alpha", b"{oops", "not_json"),
    (
        b"alpha",
        json.dumps({k: v for k, v in GOOD[0].items() if k != "team"}),
        "invalid",
    ),
    (b"alpha", json.dumps(ev("neg", "alpha", MIDNIGHT, -1)), "invalid"),
    (b"alpha", json.dumps(ev("fut", "alpha", FUTURE, 1)), "invalid"),
    (b"beta", json.dumps(ev("mis", "alpha", MIDNIGHT, 1)), "wrong_key"),
    # 1.5 MB: over the 1 MiB limit, still carried whole into the dead letter.
    (b"alpha", b"x" * 1_500_000, "oversized"),
]
BUDGETS = BudgetFile.model_validate(
    {
        "budgets": [
            {"id": "alpha-daily", "team": "alpha", "period": "day",
             "timezone": "Europe/Berlin", "tokens": 1000,
             "thresholds": [0.5, 0.8, 1.0]},
            {"id": "beta-hourly", "team": "beta", "period": "hour", "tokens": 100,
             "thresholds": [1.0]},
        ]
    }
)  # fmt: skip


def drain(settings: Settings, timeout_s: float = 180) -> None:
    last: list[tuple[int, int]] = []
    ok = wait_drained(
        settings, timeout_s=timeout_s, on_progress=lambda w, s: last.append((w, s))
    )
    assert ok, (
        f"not drained: (worker lag, sink lag) went {last[-5:]}; worker status "
        f"{worker_get(settings, 'status')}"
    )


def wait_for_budgets(settings: Settings, count: int) -> None:
    deadline = time.monotonic() + 30
    while worker_get(settings, "status")["budgets"] != count:
        assert time.monotonic() < deadline, "the worker did not pick up the budgets"
        time.sleep(0.2)


def send_everything(settings: Settings) -> None:
    with Emitter(settings) as emitter:
        emitter.send_all(GOOD)
        emitter.send_all(DUPLICATES)
        emitter.send(CONFLICT)
        for key, value, _ in BAD:
            emitter.send_raw(key, value)


def read_topic(settings: Settings, topic: str) -> list[dict[str, Any]]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=3000,
    )
    try:
        return [json.loads(record.value) for record in consumer]
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def ran(stack: Stack) -> Settings:
    settings = stack.settings
    apply_budgets(settings, BUDGETS)
    wait_for_budgets(settings, 2)
    send_everything(settings)
    drain(settings)
    return settings


def test_budgets_round_trip_through_the_topic(ran: Settings) -> None:
    assert [b.id for b in read_budgets(ran)] == ["alpha-daily", "beta-hourly"]


def test_worker_totals_are_exact(ran: Settings) -> None:
    totals = worker_get(ran, "totals")
    assert {t: (v["events"], v["tokens"]) for t, v in totals.items()} == {
        "alpha": (5, 1601),
        "beta": (2, 199),
    }
    assert totals["beta"]["unknown_cost_events"] == 1
    # Claude Sonnet 4.5 output is $15 per million tokens.
    assert Decimal(totals["alpha"]["usd"]) == Decimal(1601 * 15) / 10**6
    day = MIDNIGHT.astimezone(BERLIN)
    before = (MIDNIGHT - MS).astimezone(BERLIN)
    before_day = before.replace(hour=0, minute=0, second=0, microsecond=0)
    periods = totals["alpha"]["periods"]
    assert periods[f"Europe/Berlin|day|{day.isoformat()}"]["tokens"] == 1001
    # Day D-1 closed when the watermark passed its end plus the 1 h grace.
    assert f"Europe/Berlin|day|{before_day.isoformat()}" not in periods


def test_clickhouse_matches_the_worker(ran: Settings) -> None:
    client = connect(ran)
    rows = client.query(
        "SELECT team, count(), sum(tokens_total), sum(cost_usd), "
        "countIf(cost_source = 'unknown') FROM usage_events GROUP BY team ORDER BY team"
    ).result_rows
    assert [(r[0], r[1], r[2], r[4]) for r in rows] == [
        ("alpha", 5, 1601, 0),
        ("beta", 2, 199, 1),
    ]
    assert rows[0][3] == Decimal(1601 * 15) / 10**6
    stamps = client.query(
        "SELECT toUnixTimestamp64Milli(ts) FROM usage_events WHERE event_id = 'a2'"
    ).result_rows
    assert stamps == [(int(MIDNIGHT.timestamp() * 1000),)]


def test_dead_letters_carry_reasons(ran: Settings) -> None:
    expected = sorted([reason for _, _, reason in BAD] + ["duplicate_conflict"])
    on_topic = read_topic(ran, ran.topic_dlq)
    assert sorted(d["reason"] for d in on_topic) == expected
    assert all(d["topic"] == ran.topic_usage for d in on_topic)
    stored = connect(ran).query("SELECT reason FROM dead_letters").result_rows
    assert sorted(r[0] for r in stored) == expected


def test_each_breach_fires_exactly_once(ran: Settings) -> None:
    breaches = read_topic(ran, ran.topic_breaches)
    summary = sorted(
        (
            b["budget_id"],
            datetime.fromisoformat(b["period_start"]),
            b["threshold"],
            b["triggering_event_id"],
        )
        for b in breaches
    )
    day = MIDNIGHT
    day_before = last_berlin_midnight_before(MIDNIGHT - MS)
    hour = HOUR - timedelta(hours=1)
    assert summary == sorted(
        [
            ("alpha-daily", day_before, "0.5", "a1"),
            ("alpha-daily", day, "0.5", "a3"),
            ("alpha-daily", day, "0.8", "a3"),
            ("alpha-daily", day, "1.0", "a5"),
            ("beta-hourly", hour, "1.0", "b1"),
        ]
    )
    assert len({b["breach_id"] for b in breaches}) == 5
    stored = connect(ran).query("SELECT breach_id FROM budget_breaches").result_rows
    assert sorted(r[0] for r in stored) == sorted(b["breach_id"] for b in breaches)


def test_restart_and_full_replay_count_nothing_twice(
    ran: Settings, stack: Stack
) -> None:
    stack.stop("worker", on_progress=lambda m: None)
    stack.up(on_progress=lambda m: None)
    send_everything(ran)
    drain(ran)
    totals = worker_get(ran, "totals")
    assert {t: (v["events"], v["tokens"]) for t, v in totals.items()} == {
        "alpha": (5, 1601),
        "beta": (2, 199),
    }
    assert len(read_topic(ran, ran.topic_breaches)) == 5
    count = connect(ran).query("SELECT count() FROM usage_events").result_rows
    assert count == [(7,)]


def test_worker_killed_mid_stream_counts_everything_once(
    ran: Settings, stack: Stack
) -> None:
    fleet = Fleet(teams=1, agents_per_team=3, seed=11)
    # All 3000 events inside one UTC month, ending no later than now.
    month_start = NOW.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = NOW if NOW - month_start > timedelta(hours=1) else month_start - MS
    generated = fleet.events(3000, end=end, span=timedelta(minutes=50))
    events = [
        {**e, "team": "gamma", "event_id": f"g{n}"} for n, e in enumerate(generated)
    ]
    expected_tokens = sum(sum(e["tokens"].values()) for e in events)
    # The limit is the run's exact total: 1.0 fires on the very last event.
    budget = {"id": "gamma-monthly", "team": "gamma", "period": "month",
              "tokens": expected_tokens, "thresholds": [0.5, 1]}  # fmt: skip
    apply_budgets(
        ran,
        BudgetFile.model_validate(
            {"budgets": [*BUDGETS.model_dump()["budgets"], budget]}
        ),
    )
    wait_for_budgets(ran, 3)
    with Emitter(ran) as emitter:
        emitter.send_all(events)
    deadline = time.monotonic() + 60
    while worker_get(ran, "totals").get("gamma", {}).get("events", 0) < 500:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stack.stop("worker", kill=True, on_progress=lambda m: None)
    stack.up(on_progress=lambda m: None)
    # Wait on the outcome, not on the worker's committed offsets: after a kill,
    # Faust can stop committing a partition it has fully processed (the lag then
    # stays up until the next restart, which replays without recounting).
    deadline = time.monotonic() + 180
    while worker_get(ran, "totals")["gamma"]["events"] < 3000:
        assert time.monotonic() < deadline, worker_get(ran, "status")
        time.sleep(0.5)
    query = "SELECT count(), sum(tokens_total) FROM usage_events WHERE team = 'gamma'"
    fired_query = (
        "SELECT count(), uniqExact(breach_id) FROM budget_breaches WHERE team = 'gamma'"
    )
    while (
        consumer_lag(ran, ran.sink_group, ran.sink_topics)
        or connect(ran).query(query).result_rows[0][0] < 3000
        or connect(ran).query(fired_query).result_rows[0][1] < 2
    ):
        assert time.monotonic() < deadline, "the sink did not catch up"
        time.sleep(0.5)

    gamma = worker_get(ran, "totals")["gamma"]
    assert (gamma["events"], gamma["tokens"]) == (3000, expected_tokens)
    time.sleep(2)  # a row sent twice would have arrived by now
    assert connect(ran).query(query).result_rows == [(3000, expected_tokens)]
    fired = [b for b in read_topic(ran, ran.topic_breaches) if b["team"] == "gamma"]
    assert {b["threshold"] for b in fired} == {"0.5", "1"}
    assert connect(ran).query(fired_query).result_rows == [(2, 2)]


def test_invalid_budget_records_are_ignored_then_removed_by_apply(
    ran: Settings,
) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=ran.kafka_bootstrap)
    bad = b'{"id": "bad-zone", "team": "zeta", "timezone": "America", "tokens": 1}'
    producer.send(ran.topic_budgets, key=b"bad-zone", value=bad)
    producer.flush()
    producer.close()
    # The worker logs and ignores it; the valid budgets stay in force.
    time.sleep(2)
    assert worker_get(ran, "status")["ready"]
    assert "bad-zone" not in [b.id for b in read_budgets(ran)]

    result = apply_budgets(ran, BUDGETS)
    assert "bad-zone" in result.removed
    assert [b.id for b in read_budgets(ran)] == ["alpha-daily", "beta-hourly"]
