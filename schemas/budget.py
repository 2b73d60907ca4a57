"""Budgets: limits on a team's tokens or spend per calendar period."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    field_validator,
    model_validator,
)

PeriodKind = Literal["hour", "day", "week", "month"]
Severity = Literal["info", "warning", "critical"]
Measure = Literal["tokens", "usd"]

BudgetId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
]


def severity_for(threshold: Decimal) -> Severity:
    """Default severity of a threshold: below 80% info, below 100% warning."""
    if threshold >= 1:
        return "critical"
    if threshold >= Decimal("0.8"):
        return "warning"
    return "info"


class Budget(BaseModel):
    """A limit on one team's usage per calendar period in a timezone."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: BudgetId = Field(description="Unique id; the Kafka key of the budget.")
    team: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    period: PeriodKind = "day"
    timezone: str = Field("UTC", description="IANA timezone of the calendar periods.")
    week_start: Literal[0, 1, 2, 3, 4, 5, 6] = Field(
        0, description="First day of a `week` period, 0 = Monday."
    )
    tokens: Annotated[StrictInt, Field(gt=0)] | None = Field(
        None, description="Limit on the token total per period."
    )
    usd: Annotated[Decimal, Field(gt=0, allow_inf_nan=False)] | None = Field(
        None, description="Limit on cost per period, in USD."
    )
    thresholds: list[Annotated[Decimal, Field(gt=0, le=100)]] = Field(
        default_factory=lambda: [Decimal("0.5"), Decimal("0.8"), Decimal("1.0")],
        min_length=1,
        description="Fractions of the limit that fire a breach (inclusive).",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
            # OSError: a folder of the zone database, such as 'America'.
            raise ValueError(
                f"unknown timezone {value!r}: use an IANA name like Europe/Berlin"
            ) from exc
        return value

    @field_validator("thresholds")
    @classmethod
    def _sorted_unique(cls, value: list[Decimal]) -> list[Decimal]:
        return sorted(set(value))

    @model_validator(mode="after")
    def _has_a_limit(self) -> Budget:
        if self.tokens is None and self.usd is None:
            raise ValueError(f"budget {self.id!r} needs a `tokens` or `usd` limit")
        return self

    def limits(self) -> dict[Measure, Decimal]:
        """The limits in force, by measure (`tokens`, `usd`)."""
        out: dict[Measure, Decimal] = {}
        if self.tokens is not None:
            out["tokens"] = Decimal(self.tokens)
        if self.usd is not None:
            out["usd"] = self.usd
        return out


class BudgetFile(BaseModel):
    """The YAML file `meterline budgets apply` reads."""

    model_config = ConfigDict(extra="forbid")

    budgets: list[Budget] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_ids(self) -> BudgetFile:
        seen: set[str] = set()
        for budget in self.budgets:
            if budget.id in seen:
                raise ValueError(f"budget id {budget.id!r} appears more than once")
            seen.add(budget.id)
        return self
