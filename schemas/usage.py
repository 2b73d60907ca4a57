"""The canonical usage event: one billable model response.

Tokens are kept in disjoint buckets whose sum is the total, so no provider's
convention (is cached input inside input? is reasoning inside output?) leaks into
the counts. Field names are part of the public contract: extend, never rename.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

SCHEMA_VERSION = 1

#: A single model response above this many tokens in one bucket is not believable
#: (today's largest context windows are a few million tokens).
MAX_BUCKET_TOKENS = 100_000_000

#: An RFC 3339 date-time with a UTC offset (Z or +hh:mm).
RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})"
)

#: Events before this are not believable usage of a language model.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)

#: The disjoint token buckets, in contract order.
BUCKETS: tuple[str, ...] = (
    "in_uncached",
    "in_cache_read",
    "in_cache_write",
    "in_cache_write_1h",
    "out_visible",
    "out_reasoning",
)

Name = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Count = Annotated[StrictInt, Field(ge=0, le=MAX_BUCKET_TOKENS)]


class Tokens(BaseModel):
    """Disjoint token buckets of one response; each a non-negative integer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    in_uncached: Count = Field(0, description="Input tokens read without cache.")
    in_cache_read: Count = Field(0, description="Input tokens read from cache.")
    in_cache_write: Count = Field(
        0, description="Input tokens written to cache (5-minute or unknown TTL)."
    )
    in_cache_write_1h: Count = Field(
        0, description="Input tokens written to a 1-hour cache."
    )
    out_visible: Count = Field(0, description="Output tokens returned to the caller.")
    out_reasoning: Count = Field(0, description="Reasoning (thinking) output tokens.")

    @property
    def total(self) -> int:
        """Sum of every bucket, in tokens."""
        return (
            self.in_uncached
            + self.in_cache_read
            + self.in_cache_write
            + self.in_cache_write_1h
            + self.out_visible
            + self.out_reasoning
        )

    @property
    def input_total(self) -> int:
        """All input tokens, cached or not."""
        return (
            self.in_uncached
            + self.in_cache_read
            + self.in_cache_write
            + self.in_cache_write_1h
        )

    @property
    def output_total(self) -> int:
        """All output tokens, visible and reasoning."""
        return self.out_visible + self.out_reasoning


class UsageEvent(BaseModel):
    """One billable model response, as emitted to `meterline.usage`.

    Validation needs a clock for the future-skew check: pass
    `context={"now": datetime, "future_skew": timedelta}` to `model_validate`;
    without one, the current time and 5 minutes are used.
    """

    model_config = ConfigDict(extra="allow", frozen=True, str_strip_whitespace=True)

    schema_version: Literal[1] = Field(description="Contract version; always 1.")
    event_id: Name = Field(
        description="Idempotency key: one per billable model response."
    )
    ts: AwareDatetime = Field(
        description="Event time, RFC 3339 with an offset (when the response ended)."
    )
    org: Name | None = None
    team: Name = Field(description="The team the usage is charged to (the Kafka key).")
    agent: Name | None = None
    session: Name | None = None
    user: Name | None = None
    harness: Name | None = Field(None, description="e.g. claude-code, codex, openclaw.")
    provider: Name | None = Field(None, description="e.g. anthropic, openai, google.")
    model: Name | None = Field(None, description="The model id as the provider sent.")
    tokens: Tokens = Field(default_factory=Tokens)
    cost_usd: (
        Annotated[Decimal, Field(ge=0, le=1_000_000, allow_inf_nan=False)] | None
    ) = Field(None, description="Provider-reported cost in USD; wins over computed.")
    tags: dict[
        Annotated[str, StringConstraints(min_length=1, max_length=128)],
        Annotated[str, StringConstraints(max_length=1024)],
    ] = Field(default_factory=dict, max_length=64)
    raw_usage: dict[str, Any] | None = Field(
        None, description="The provider's usage object, kept for re-normalisation."
    )
    usage_schema: Name | None = Field(
        None, description="Which convention raw_usage follows, e.g. anthropic.messages."
    )

    @field_validator("ts", mode="before")
    @classmethod
    def _rfc3339(cls, value: object) -> object:
        # Lax datetime parsing would read "1764000000" as epoch seconds.
        if not isinstance(value, str) or not RFC3339.fullmatch(value):
            raise ValueError(
                "must be an RFC 3339 timestamp with an offset, like "
                "2026-12-03T14:05:09.120+01:00"
            )
        return value

    @field_validator("ts")
    @classmethod
    def _not_in_future(cls, value: datetime, info: ValidationInfo) -> datetime:
        context = info.context or {}
        now: datetime = context.get("now") or datetime.now(UTC)
        skew: timedelta = context.get("future_skew") or timedelta(minutes=5)
        if value < EARLIEST:
            raise ValueError(f"timestamp {value.isoformat()} is before 2000-01-01")
        if value - now > skew:
            raise ValueError(
                f"timestamp {value.isoformat()} is more than "
                f"{int(skew.total_seconds())} s in the future"
            )
        return value

    @field_validator("cost_usd", mode="before")
    @classmethod
    def _cost_from_json_number(cls, value: object) -> object:
        # orjson yields floats; str() keeps the decimal digits the sender wrote.
        if isinstance(value, float):
            return Decimal(repr(value))
        return value


CostSource = Literal["provider", "override", "catalog", "unknown"]


class AcceptedUsage(BaseModel):
    """An accepted, priced event: what the worker publishes for the warehouse."""

    model_config = ConfigDict(frozen=True)

    event: UsageEvent
    cost_usd: Decimal | None = Field(description="Final cost in USD; None if unknown.")
    cost_source: CostSource
    price_model: str | None = Field(None, description="Catalog model id that matched.")
    price_provider: str | None = Field(None, description="Catalog provider id.")
    flags: list[str] = Field(default_factory=list)
    ingested_at: AwareDatetime
    source_partition: int
    source_offset: int
