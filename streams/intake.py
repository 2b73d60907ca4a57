"""Intake: bytes from `meterline.usage` to a validated event, or a dead letter.

Everything here is pure: no Kafka, no state. The worker calls `decode` for each
record and `fingerprint` to tell a retried event from a conflicting one.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from schemas.deadletter import DeadLetter, Reason
from schemas.usage import SCHEMA_VERSION, UsageEvent
from streams import json

#: Deepest JSON nesting accepted; a usage event needs 3 levels, raw provider
#: usage objects a few more. Far below what the JSON library can serialise.
MAX_DEPTH = 32


@dataclass(frozen=True, slots=True)
class Source:
    """Where a record came from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None = None


class RejectedError(Exception):
    """A record that cannot be accepted; carries the dead-letter reason."""

    def __init__(
        self,
        reason: Reason,
        detail: str,
        *,
        event_id: str | None = None,
        team: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.reason: Reason = reason
        self.detail = detail
        self.event_id = event_id
        self.team = team


def decode(
    value: bytes | None,
    *,
    now: datetime,
    future_skew: timedelta,
    max_bytes: int,
) -> UsageEvent:
    """Parse and validate one record value; raises `RejectedError` with a reason."""
    if value is None:
        raise RejectedError("not_json", "the record has no value (a tombstone?)")
    if len(value) > max_bytes:
        raise RejectedError(
            "oversized", f"the record is {len(value)} bytes; the limit is {max_bytes}"
        )
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RejectedError("not_utf8", f"the record is not UTF-8: {exc}") from exc
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RejectedError("not_json", f"the record is not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise RejectedError(
            "not_object", f"expected a JSON object, got {type(raw).__name__}"
        )
    if _depth(raw) > MAX_DEPTH:
        raise RejectedError(
            "invalid", f"the JSON is nested deeper than {MAX_DEPTH} levels"
        )
    return _validate(raw, now=now, future_skew=future_skew)


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if level > MAX_DEPTH:
            break
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def _validate(
    raw: dict[str, Any], *, now: datetime, future_skew: timedelta
) -> UsageEvent:
    event_id = raw.get("event_id") if isinstance(raw.get("event_id"), str) else None
    team = raw.get("team") if isinstance(raw.get("team"), str) else None
    version = raw.get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:
        raise RejectedError(
            "unknown_schema_version",
            f"schema_version {version!r} is not supported; this worker reads "
            f"{SCHEMA_VERSION}",
            event_id=event_id,
            team=team,
        )
    if not isinstance(raw.get("ts"), str):
        raise RejectedError(
            "invalid",
            "ts: must be an RFC 3339 string with an offset, "
            f"not {type(raw.get('ts')).__name__}",
            event_id=event_id,
            team=team,
        )
    try:
        return UsageEvent.model_validate(
            raw, context={"now": now, "future_skew": future_skew}
        )
    except ValidationError as exc:
        detail = _describe(exc)
        raise RejectedError("invalid", detail, event_id=event_id, team=team) from exc


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "event"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def fingerprint(event: UsageEvent) -> str:
    """What must match for two events with one id to be the same response.

    The timestamp is left out on purpose: a retry may carry a new one.
    """
    basis = {
        "team": event.team,
        "model": event.model,
        "tokens": event.tokens.model_dump(),
        "cost_usd": event.cost_usd,
    }
    return hashlib.sha256(json.dumps_sorted(basis)).hexdigest()[:16]


def dead_letter(
    value: bytes | None, source: Source, rejected: RejectedError, *, at: datetime
) -> DeadLetter:
    """The dead letter for a rejected record, holding its original bytes."""
    return DeadLetter(
        reason=rejected.reason,
        detail=rejected.detail,
        topic=source.topic,
        partition=source.partition,
        offset=source.offset,
        key_b64=base64.b64encode(source.key).decode() if source.key else None,
        payload_b64=base64.b64encode(value or b"").decode(),
        event_id=rejected.event_id,
        team=rejected.team,
        failed_at=at,
    )
