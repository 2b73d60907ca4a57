"""Dead letters on `meterline.usage.dlq`: a rejected message and why."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

Reason = Literal[
    "oversized",
    "not_utf8",
    "not_json",
    "not_object",
    "unknown_schema_version",
    "invalid",
    "duplicate_conflict",
    "wrong_key",
    "internal_error",
]


class DeadLetter(BaseModel):
    """A message the worker could not accept, with everything needed to replay it."""

    model_config = ConfigDict(frozen=True)

    schema_version: Literal[1] = 1
    reason: Reason
    detail: str = Field(description="Human-readable explanation; never holds secrets.")
    topic: str
    partition: int
    offset: int
    key_b64: str | None = Field(None, description="The original key, base64.")
    payload_b64: str = Field(description="The original value bytes, base64.")
    event_id: str | None = Field(None, description="When the payload had one.")
    team: str | None = None
    failed_at: AwareDatetime
