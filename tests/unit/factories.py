"""Builders of contract objects for tests; override any field by keyword."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from schemas.usage import UsageEvent

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def event_dict(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "schema_version": 1,
        "event_id": "evt-1",
        "ts": "2026-12-03T11:00:00+00:00",
        "team": "research",
        "agent": "agent-1",
        "provider": "anthropic",
        "model": "claude-sonnet-4-5",
        "tokens": {"in_uncached": 1000, "out_visible": 500},
    }
    base.update(overrides)
    return base


def usage_event(**overrides: Any) -> UsageEvent:
    return UsageEvent.model_validate(event_dict(**overrides), context={"now": NOW})
