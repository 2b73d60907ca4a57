"""Export the public contracts as JSON Schema, for emitters in any language."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from schemas.breach import BreachEvent
from schemas.budget import BudgetFile
from schemas.deadletter import DeadLetter
from schemas.usage import UsageEvent
from streams import json

CONTRACTS: dict[str, type[BaseModel]] = {
    "usage-event": UsageEvent,
    "budget-file": BudgetFile,
    "breach-event": BreachEvent,
    "dead-letter": DeadLetter,
}


def export_all(directory: Path) -> list[Path]:
    """Write `<name>.schema.json` for each contract; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, model in CONTRACTS.items():
        schema = model.model_json_schema(mode="validation")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://meterline.dev/schemas/{name}.schema.json"
        path = directory / f"{name}.schema.json"
        path.write_bytes(json.dumps_sorted(schema) + b"\n")
        paths.append(path)
    return paths
