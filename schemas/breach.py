"""Budget events on `meterline.breaches`, the contract platform teams consume."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.budget import Measure, PeriodKind, Severity

__all__ = ["BreachEvent", "Measure"]


class BreachEvent(BaseModel):
    """A budget threshold crossed in one period. Fired once per
    (budget, period, measure, threshold); `breach_id` is deterministic, so a
    consumer that sees an id twice can drop the second."""

    model_config = ConfigDict(frozen=True)

    schema_version: Literal[1] = 1
    kind: Literal["breach"] = "breach"
    breach_id: str = Field(
        description="sha256 of budget, period start, measure, threshold."
    )
    budget_id: str
    team: str
    period: PeriodKind
    timezone: str
    period_start: AwareDatetime = Field(description="Inclusive, in the budget's zone.")
    period_end: AwareDatetime = Field(description="Exclusive, in the budget's zone.")
    measure: Measure
    threshold: Decimal = Field(description="Fraction of the limit, e.g. 0.8.")
    limit: Decimal = Field(description="Tokens or USD, per `measure`.")
    used: Decimal = Field(description="Usage in the period after the triggering event.")
    ratio: Decimal = Field(description="used / limit.")
    severity: Severity
    triggering_event_id: str
    event_ts: AwareDatetime = Field(description="Event time of the triggering event.")
    detected_at: datetime = Field(description="Wall-clock time the worker fired it.")
