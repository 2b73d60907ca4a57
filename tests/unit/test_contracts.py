from pathlib import Path

from schemas.export import export_all
from schemas.usage import UsageEvent
from streams import json

COMMITTED = Path(__file__).resolve().parents[2] / "schemas" / "json"


def test_committed_json_schemas_are_current(tmp_path: Path) -> None:
    for fresh in export_all(tmp_path):
        committed = COMMITTED / fresh.name
        assert committed.exists(), f"run `meterline schema export` to add {fresh.name}"
        assert committed.read_bytes() == fresh.read_bytes(), (
            f"{committed} is stale: run `meterline schema export`"
        )


def test_usage_schema_names_the_contract_fields() -> None:
    schema = json.loads((COMMITTED / "usage-event.schema.json").read_bytes())
    assert set(schema["required"]) == {"schema_version", "event_id", "ts", "team"}
    assert set(schema["properties"]) == set(UsageEvent.model_fields)
