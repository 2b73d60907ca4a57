from datetime import UTC, datetime
from decimal import Decimal

from schemas.usage import AcceptedUsage
from streams import json
from streams.sink import USAGE_COLUMNS, usage_row
from tests.unit.factories import usage_event


def accepted(**overrides: object) -> dict[str, object]:
    record = AcceptedUsage(
        event=usage_event(custom="kept", raw_usage={"input_tokens": 1000}, **overrides),
        cost_usd=Decimal("0.010500000000"),
        cost_source="catalog",
        price_model="claude-sonnet-4-5",
        price_provider="anthropic",
        flags=["late_period"],
        ingested_at=datetime(2026, 12, 3, 12, tzinfo=UTC),
        source_partition=2,
        source_offset=99,
    )
    loaded: dict[str, object] = json.loads(json.dumps(record.model_dump(mode="json")))
    return loaded


def test_usage_row_has_every_column_in_order() -> None:
    row = dict(zip(USAGE_COLUMNS, usage_row(accepted()), strict=True))
    assert row["event_id"] == "evt-1"
    assert row["ts"] == datetime(2026, 12, 3, 11, tzinfo=UTC)
    assert row["tokens_total"] == 1500
    assert row["cost_usd"] == Decimal("0.0105")
    assert row["flags"] == ["late_period"]
    assert json.loads(row["extra"]) == {"custom": "kept"}
    assert json.loads(row["raw_usage"]) == {"input_tokens": 1000}
    assert (row["source_partition"], row["source_offset"]) == (2, 99)
    assert row["org"] == ""


def test_timestamps_stay_aware_whatever_the_offset() -> None:
    row = dict(
        zip(
            USAGE_COLUMNS,
            usage_row(accepted(ts="2026-12-03T12:30:00+01:00")),
            strict=True,
        )
    )
    assert row["ts"].utcoffset() is not None
    assert (
        row["ts"].timestamp() == datetime(2026, 12, 3, 11, 30, tzinfo=UTC).timestamp()
    )


def test_a_usage_row_is_identified_by_id_and_source_offset() -> None:
    from streams.settings import Settings
    from streams.sink import table_specs

    settings = Settings()
    spec = table_specs(settings)[settings.topic_accepted]
    assert spec.key_of(usage_row(accepted())) == "evt-1/2/99"
    assert "source_offset" in spec.key_sql
