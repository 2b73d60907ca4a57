from datetime import timedelta

import pytest

from schemas.usage import UsageEvent
from streams import json
from streams.intake import RejectedError, Source, dead_letter, decode, fingerprint
from tests.unit.factories import NOW, event_dict, usage_event

LIMIT = 10_000


def without(field: str) -> bytes:
    return json.dumps({k: v for k, v in event_dict().items() if k != field})


def nested(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


def run(value: bytes) -> UsageEvent:
    return decode(value, now=NOW, future_skew=timedelta(minutes=5), max_bytes=LIMIT)


def test_valid_event_is_accepted_with_unknown_fields_kept() -> None:
    event = run(json.dumps(event_dict(custom_field={"x": 1})))
    assert event.team == "research"
    assert event.model_extra == {"custom_field": {"x": 1}}
    assert event.tokens.total == 1500


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"x" * (LIMIT + 1), "oversized"),
        (b"\xff\xfe{}", "not_utf8"),
        (b"{not json", "not_json"),
        (b"[1, 2]", "not_object"),
        (b'"a string"', "not_object"),
        (json.dumps(event_dict(schema_version=2)), "unknown_schema_version"),
        (json.dumps(event_dict(schema_version=True)), "unknown_schema_version"),
        (without("team"), "invalid"),
        (json.dumps(event_dict(team="")), "invalid"),
        (without("event_id"), "invalid"),
        (json.dumps(event_dict(tokens={"in_uncached": -1})), "invalid"),
        (json.dumps(event_dict(tokens={"in_uncached": 1.5})), "invalid"),
        (json.dumps(event_dict(tokens={"in_uncached": "12"})), "invalid"),
        (json.dumps(event_dict(tokens={"in_uncached": True})), "invalid"),
        (json.dumps(event_dict(tokens={"in_uncached": 10**12})), "invalid"),
        (json.dumps(event_dict(tokens={"bogus": 1})), "invalid"),
        (b'{"schema_version":1,"event_id":"e","ts":"2026-12-03T11:00:00Z",'
         b'"team":"t","tokens":{"out_visible":NaN}}', "not_json"),
        (json.dumps(event_dict(ts="2026-12-03T11:00:00")), "invalid"),
        (json.dumps(event_dict(ts="2026-12-03T12:06:00+00:00")), "invalid"),
        (json.dumps(event_dict(ts="yesterday")), "invalid"),
        (json.dumps(event_dict(cost_usd=-1)), "invalid"),
        (json.dumps(event_dict(tags={"k": 1})), "invalid"),
    ],
)  # fmt: skip
def test_bad_records_are_rejected_with_a_reason(value: bytes, reason: str) -> None:
    with pytest.raises(RejectedError) as caught:
        run(value)
    assert caught.value.reason == reason
    assert caught.value.detail


def test_timestamp_within_skew_is_accepted() -> None:
    event = run(json.dumps(event_dict(ts="2026-12-03T12:04:59+00:00")))
    assert event.ts.isoformat() == "2026-12-03T12:04:59+00:00"


def test_offset_timestamp_is_kept_as_the_same_instant() -> None:
    event = run(json.dumps(event_dict(ts="2026-12-03T12:30:00+01:00")))
    assert event.ts.timestamp() == NOW.timestamp() - 30 * 60


def test_invalid_rejection_names_the_event_and_team() -> None:
    with pytest.raises(RejectedError) as caught:
        run(json.dumps(event_dict(tokens={"in_uncached": -1})))
    assert caught.value.event_id == "evt-1"
    assert caught.value.team == "research"
    assert "tokens.in_uncached" in caught.value.detail


def test_fingerprint_ignores_timestamp_but_not_tokens() -> None:
    first = usage_event()
    retried = usage_event(ts="2026-12-03T11:00:05+00:00")
    changed = usage_event(tokens={"in_uncached": 1001, "out_visible": 500})
    assert fingerprint(first) == fingerprint(retried)
    assert fingerprint(first) != fingerprint(changed)


def test_dead_letter_keeps_original_bytes_and_position() -> None:
    rejected = RejectedError("not_json", "bad")
    letter = dead_letter(b"\x00raw", Source("t", 3, 42, b"team"), rejected, at=NOW)
    assert (letter.topic, letter.partition, letter.offset) == ("t", 3, 42)
    assert letter.payload_b64 == "AHJhdw=="
    assert letter.key_b64 == "dGVhbQ=="


@pytest.mark.parametrize(
    "value",
    [
        json.dumps(event_dict(schema_version=1.0)),
        json.dumps(event_dict(ts=1764763200)),
        json.dumps(event_dict(ts="0001-01-01T00:00:00+01:00")),
        json.dumps(event_dict(ts="1999-12-31T23:59:59Z")),
        json.dumps(event_dict(deep=nested(40))),
    ],
    ids=["float version", "epoch ts", "year one", "before 2000", "too deep"],
)
def test_near_misses_are_rejected(value: bytes) -> None:
    with pytest.raises(RejectedError) as caught:
        run(value)
    assert caught.value.reason in {"invalid", "unknown_schema_version"}


def test_schema_version_is_checked_before_the_rest() -> None:
    with pytest.raises(RejectedError) as caught:
        run(b'{"schema_version": 9, "event_id": "x", "team": "t"}')
    assert caught.value.reason == "unknown_schema_version"


@pytest.mark.parametrize(
    "ts",
    ["1764000000000", "1764000000", "1764000000.5", "2026-12-03", "2026-12-03T11:00Z"],
)
def test_timestamps_must_be_rfc3339_with_offset(ts: str) -> None:
    with pytest.raises(RejectedError) as caught:
        run(json.dumps(event_dict(ts=ts)))
    assert caught.value.reason == "invalid"
    assert "RFC 3339" in caught.value.detail
