"""The Claude Code transcript importer, on the bundled samples and ad-hoc files."""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from schemas.usage import BUCKETS, UsageEvent
from streams import json
from streams.importers.claude_code import (
    ImportResult,
    read_transcripts,
    validate_events,
)

SAMPLES = Path(__file__).resolve().parents[2] / "examples" / "claude-code"
PROJECT = SAMPLES / "projects" / "-home-dev-shop-api"
S1 = "3b9d7c2e-6a41-4f0b-8e15-c7a2d9f06b58"
S2 = "8e4f1a6b-2c93-4d57-b0e8-19f3c6a7d204"
SESSION_1 = PROJECT / f"{S1}.jsonl"
SESSION_2 = PROJECT / f"{S2}.jsonl"
SUBAGENT = PROJECT / S1 / "subagents" / "agent-ab12cd34.jsonl"

SONNET = "claude-sonnet-4-5-20250929"
OPUS = "claude-opus-4-1-20250805"
HAIKU = "claude-haiku-4-5-20251001"

#: Far after the samples (November 2026), so the future-skew check passes.
NOW = datetime(2030, 1, 1, tzinfo=UTC)

EXPECTED_TOTALS = {
    "in_uncached": 3_682,
    "in_cache_read": 164_940,
    "in_cache_write": 16_200,
    "in_cache_write_1h": 37_530,
    "out_visible": 5_496,
    "out_reasoning": 0,
}


def _msg(name: str) -> str:
    return f"claude-code:msg_01SampleShopApi{name}x0000"


def _totals(events: list[dict[str, Any]]) -> dict[str, int]:
    totals = dict.fromkeys(BUCKETS, 0)
    for event in events:
        for bucket, tokens in event["tokens"].items():
            totals[bucket] += tokens
    return totals


def _by_id(result: ImportResult) -> dict[str, dict[str, Any]]:
    return {event["event_id"]: event for event in result.events}


@pytest.fixture(scope="module")
def samples() -> ImportResult:
    return read_transcripts([SAMPLES], team="shop")


# --- ad-hoc transcripts -------------------------------------------------------


def _assistant(
    msg_id: str | None,
    output: int,
    ts: str = "2026-11-05T08:00:00.000Z",
    *,
    request_id: str | None = "req_01AdHoc",
    model: str = SONNET,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "Refactor the parser"}],
        "usage": usage
        if usage is not None
        else {
            "input_tokens": 10,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 100,
            "output_tokens": output,
        },
    }
    if msg_id is not None:
        message["id"] = msg_id
    record: dict[str, Any] = {
        "type": "assistant",
        "sessionId": "00000000-0000-4000-8000-000000000001",
        "timestamp": ts,
        "uuid": "00000000-0000-4000-8000-0000000000aa",
        "cwd": "/home/dev/example",
        "version": "2.0.14",
        "message": message,
    }
    if request_id is not None:
        record["requestId"] = request_id
    return record


def _write(path: Path, *records: dict[str, Any] | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r).decode() for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- the bundled samples -------------------------------------------------------


def test_sample_counters(samples: ImportResult) -> None:
    assert (
        samples.files,
        samples.lines,
        samples.responses,
        samples.skipped_synthetic,
        samples.skipped_malformed,
        samples.duplicate_lines,
    ) == (3, 53, 15, 1, 0, 15)
    assert len(samples.events) == 15
    assert len({e["event_id"] for e in samples.events}) == 15


def test_sample_bucket_totals(samples: ImportResult) -> None:
    totals = _totals(samples.events)
    assert totals == EXPECTED_TOTALS
    assert sum(totals.values()) == 227_848


def test_expected_md_matches_import(samples: ImportResult) -> None:
    text = (SAMPLES / "EXPECTED.md").read_text(encoding="utf-8")
    documented = {
        bucket: int(match.group(1).replace(",", ""))
        for bucket in BUCKETS
        if (match := re.search(rf"^\| {bucket} +\| +([\d,]+) \|$", text, re.M))
    }
    assert documented == _totals(samples.events)
    assert re.search(r"^\| responses \(events\) \| +15 \|$", text, re.M)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (SONNET, (8, 43, 114_980, 6_550, 35_530, 2_472)),
        (OPUS, (2, 14, 38_730, 3_310, 2_000, 2_454)),
        (HAIKU, (5, 3_625, 11_230, 6_340, 0, 570)),
    ],
)
def test_sample_totals_per_model(
    samples: ImportResult, model: str, expected: tuple[int, ...]
) -> None:
    events = [e for e in samples.events if e["model"] == model]
    totals = _totals(events)
    assert (len(events), *(totals[b] for b in BUCKETS[:5])) == expected


@pytest.mark.parametrize(
    ("name", "out_visible"),
    [
        ("R01", 388),  # 6 -> 6 -> 388
        ("R02", 245),  # 12 -> 245, and the resumed copy has only the 12
        ("R04", 1034),
        ("R07", 512),
        ("R11", 689),
        ("A02", 233),
        ("R03", 97),  # single line
    ],
)
def test_streamed_response_counts_largest_output(
    samples: ImportResult, name: str, out_visible: int
) -> None:
    event = _by_id(samples)[_msg(name)]
    assert event["tokens"]["out_visible"] == out_visible
    assert event["tokens"]["out_reasoning"] == 0
    assert event["raw_usage"]["output_tokens"] == out_visible


def test_synthetic_rows_dropped(samples: ImportResult) -> None:
    assert samples.skipped_synthetic == 1
    assert all(e["model"] != "<synthetic>" for e in samples.events)
    assert all(e["event_id"].startswith("claude-code:msg_01") for e in samples.events)


def test_resumed_copies_counted_once(samples: ImportResult) -> None:
    alone = read_transcripts([SESSION_2], team="shop")
    assert alone.responses == 7  # R01-R03 copies + R09-R12
    # the copies add nothing to the totals of the whole folder
    both = read_transcripts([SESSION_1, SESSION_2, SUBAGENT], team="shop")
    assert _totals(both.events) == EXPECTED_TOTALS
    assert both.responses == 15
    # copies keep the original session; new responses belong to the resumed one
    sessions = {e["event_id"]: e["session"] for e in samples.events}
    assert {sessions[_msg(n)] for n in ("R01", "R02", "R03")} == {S1}
    assert {sessions[_msg(n)] for n in ("R09", "R10", "R11", "R12")} == {S2}
    # session 2 alone only saw the first streamed line of R02
    assert _by_id(alone)[_msg("R02")]["tokens"]["out_visible"] == 12


@pytest.mark.parametrize(
    "paths",
    [
        [SAMPLES],
        [SUBAGENT, SESSION_2, SESSION_1],
        [SESSION_1, PROJECT, SAMPLES / "projects" / ".." / "projects"],
    ],
    ids=["folder", "files-reversed", "overlapping"],
)
def test_reimport_is_identical(samples: ImportResult, paths: list[Path]) -> None:
    again = read_transcripts(paths, team="shop")
    assert again.events == samples.events
    assert again.files == 3
    assert [e["event_id"] for e in again.events] == [
        e["event_id"] for e in samples.events
    ]


def test_events_ordered_by_ts_then_id(samples: ImportResult) -> None:
    keys = [(e["ts"], e["event_id"]) for e in samples.events]
    assert keys == sorted(keys)
    assert samples.events[0]["event_id"] == _msg("R01")
    assert samples.events[0]["ts"] == "2026-11-03T09:14:05.120Z"  # its first line


@pytest.mark.parametrize(
    ("name", "write_5m", "write_1h"),
    [
        ("R01", 2_500, 12_000),  # mixed breakdown
        ("R07", 0, 1_530),  # all 1h
        ("R10", 1_100, 2_000),
        ("R02", 1_250, 0),  # all 5m
        ("R05", 640, 0),  # no breakdown: all to in_cache_write
    ],
)
def test_cache_write_ttl_split(
    samples: ImportResult, name: str, write_5m: int, write_1h: int
) -> None:
    tokens = _by_id(samples)[_msg(name)]["tokens"]
    assert (tokens["in_cache_write"], tokens["in_cache_write_1h"]) == (
        write_5m,
        write_1h,
    )


def test_sample_event_shape(samples: ImportResult) -> None:
    event = _by_id(samples)[_msg("R01")]
    assert event == {
        "schema_version": 1,
        "event_id": _msg("R01"),
        "ts": "2026-11-03T09:14:05.120Z",
        "team": "shop",
        "agent": "claude-code",
        "session": S1,
        "harness": "claude-code",
        "provider": "anthropic",
        "model": SONNET,
        "tokens": {
            "in_uncached": 3,
            "in_cache_read": 0,
            "in_cache_write": 2_500,
            "in_cache_write_1h": 12_000,
            "out_visible": 388,
            "out_reasoning": 0,
        },
        "raw_usage": {
            "input_tokens": 3,
            "cache_creation_input_tokens": 14_500,
            "cache_read_input_tokens": 0,
            "cache_creation": {
                "ephemeral_5m_input_tokens": 2_500,
                "ephemeral_1h_input_tokens": 12_000,
            },
            "output_tokens": 388,
            "service_tier": "standard",
        },
        "usage_schema": "anthropic.messages",
        "tags": {"project": "-home-dev-shop-api"},
    }


def test_sample_tags(samples: ImportResult) -> None:
    subagent = {_msg(n) for n in ("A01", "A02", "A03")}
    for event in samples.events:
        expected = {"project": "-home-dev-shop-api"}
        if event["event_id"] in subagent:
            expected["subagent"] = "true"
        assert event["tags"] == expected
        assert "cwd" not in event
        assert "/home/dev" not in json.dumps(event).decode()


def test_samples_validate_as_usage_events(samples: ImportResult) -> None:
    events = validate_events(samples.events, now=NOW)
    assert all(isinstance(e, UsageEvent) for e in events)
    assert sum(e.tokens.total for e in events) == 227_848
    assert [e.event_id for e in events] == [e["event_id"] for e in samples.events]
    # the same dicts are valid for the schema directly, given a clock
    for event in samples.events:
        UsageEvent.model_validate(event, context={"now": NOW})


def test_caller_fields(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.jsonl", _assistant("msg_01A", 5))
    plain = read_transcripts([path], team="shop").events[0]
    assert plain["agent"] == "claude-code"
    assert "user" not in plain
    assert "org" not in plain
    assert plain["tags"] == {}  # not under a "projects" folder
    given = read_transcripts(
        [path], team="shop", agent="reviewer", user="dev-1", org="acme"
    ).events[0]
    assert (given["agent"], given["user"], given["org"]) == (
        "reviewer",
        "dev-1",
        "acme",
    )


# --- ad-hoc edge cases ---------------------------------------------------------


def test_ts_is_first_line_so_partial_reimport_matches(tmp_path: Path) -> None:
    lines = [
        _assistant("msg_01Stream", 3, "2026-11-05T08:00:00.000Z"),
        _assistant("msg_01Stream", 3, "2026-11-05T08:00:01.500Z"),
        _assistant("msg_01Stream", 250, "2026-11-05T08:00:04.250Z"),
    ]
    partial = read_transcripts([_write(tmp_path / "p" / "s.jsonl", lines[0])], team="t")
    full = read_transcripts([_write(tmp_path / "f" / "s.jsonl", *lines)], team="t")
    (before,), (after,) = partial.events, full.events
    assert before["event_id"] == after["event_id"] == "claude-code:msg_01Stream"
    assert before["ts"] == after["ts"] == "2026-11-05T08:00:00.000Z"
    assert (before["tokens"]["out_visible"], after["tokens"]["out_visible"]) == (3, 250)
    assert full.duplicate_lines == 2


def test_earliest_line_wins_across_files_in_any_order(tmp_path: Path) -> None:
    # The copy sorts first by path but was written later: the earlier line wins.
    _write(tmp_path / "a.jsonl", _assistant("msg_01X", 40, "2026-11-05T09:00:00Z"))
    _write(tmp_path / "b.jsonl", _assistant("msg_01X", 40, "2026-11-05T08:00:00Z"))
    (event,) = read_transcripts([tmp_path], team="t").events
    assert event["ts"] == "2026-11-05T08:00:00.000Z"


def test_largest_of_each_counter_is_kept(tmp_path: Path) -> None:
    first = _assistant("msg_01M", 900)
    later = _assistant("msg_01M", 20)
    later["message"]["usage"]["input_tokens"] = 15  # more input, less output
    result = read_transcripts([_write(tmp_path / "s.jsonl", first, later)], team="t")
    (event,) = result.events
    assert event["tokens"]["in_uncached"] == 15
    assert event["tokens"]["out_visible"] == 900
    # raw_usage is the most-output line, patched so it re-normalises the same
    assert event["raw_usage"]["input_tokens"] == 15
    assert event["raw_usage"]["output_tokens"] == 900


@pytest.mark.parametrize(
    ("usage", "write_5m", "write_1h"),
    [
        ({"cache_creation_input_tokens": 700}, 700, 0),
        (
            {
                "cache_creation_input_tokens": 700,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 200,
                    "ephemeral_1h_input_tokens": 500,
                },
            },
            200,
            500,
        ),
        (  # breakdown short of the total: the rest has an unknown TTL
            {
                "cache_creation_input_tokens": 900,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 0,
                    "ephemeral_1h_input_tokens": 500,
                },
            },
            400,
            500,
        ),
    ],
    ids=["no-breakdown", "breakdown", "short-breakdown"],
)
def test_cache_write_mapping(
    tmp_path: Path, usage: dict[str, Any], write_5m: int, write_1h: int
) -> None:
    record = _assistant("msg_01C", 1, usage={"input_tokens": 1, **usage})
    (event,) = read_transcripts([_write(tmp_path / "s.jsonl", record)], team="t").events
    assert event["tokens"]["in_cache_write"] == write_5m
    assert event["tokens"]["in_cache_write_1h"] == write_1h


def test_synthetic_row_dropped(tmp_path: Path) -> None:
    zero = {"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0}
    synthetic = _assistant(
        "9f1e0c4a", 0, request_id=None, model="<synthetic>", usage=zero
    )
    path = _write(tmp_path / "s.jsonl", synthetic, _assistant("msg_01Real", 7))
    result = read_transcripts([path], team="t")
    assert result.skipped_synthetic == 1
    assert [e["event_id"] for e in result.events] == ["claude-code:msg_01Real"]


@pytest.mark.parametrize(
    "bad_line",
    [
        '{"type":"assistant","message":{"id":"msg_01T","usage":{"input_tok',
        "[1, 2, 3]",
        "not json at all",
        json.dumps(_assistant("msg_01B", 5, "yesterday")).decode(),
        json.dumps(_assistant("msg_01B", 5, "2026-11-05T08:00:00")).decode(),
        json.dumps(_assistant("msg_01B", -5)).decode(),
        json.dumps(_assistant("msg_01B", 5, usage={"output_tokens": "5"})).decode(),
        json.dumps({"type": "assistant", "message": "text"}).decode(),
        json.dumps({"type": "assistant", "message": {"usage": [1]}}).decode(),
    ],
    ids=[
        "truncated",
        "array",
        "garbage",
        "bad-ts",
        "naive-ts",
        "negative",
        "string-count",
        "message-str",
        "usage-list",
    ],
)
def test_malformed_line_skipped_with_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, bad_line: str
) -> None:
    path = _write(
        tmp_path / "s.jsonl",
        _assistant("msg_01Good", 11),
        bad_line,
        _assistant("msg_01After", 12, "2026-11-05T08:01:00Z"),
    )
    with caplog.at_level(logging.WARNING, logger="streams.importers.claude_code"):
        result = read_transcripts([path], team="t")
    assert result.skipped_malformed == 1
    assert result.lines == 3
    assert [e["event_id"] for e in result.events] == [
        "claude-code:msg_01Good",
        "claude-code:msg_01After",
    ]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"{path}:2:" in warnings[0]


def test_truncated_last_line_of_live_file(tmp_path: Path) -> None:
    path = tmp_path / "live.jsonl"
    good = json.dumps(_assistant("msg_01Live", 9)).decode()
    path.write_text(good + "\n" + good[:57], encoding="utf-8")  # no final newline
    result = read_transcripts([path], team="t")
    assert (result.responses, result.skipped_malformed) == (1, 1)


@pytest.mark.parametrize(
    ("msg_id", "request_id", "expected"),
    [
        ("msg_01Id", "req_01Id", "claude-code:msg_01Id"),
        (None, "req_01Only", "claude-code:req_01Only"),
        (None, None, re.compile(r"^claude-code:sha256:[0-9a-f]{32}$")),
    ],
    ids=["message-id", "request-id", "line-hash"],
)
def test_event_id_fallbacks(
    tmp_path: Path,
    msg_id: str | None,
    request_id: str | None,
    expected: str | re.Pattern[str],
) -> None:
    path = _write(tmp_path / "s.jsonl", _assistant(msg_id, 3, request_id=request_id))
    first = read_transcripts([path], team="t").events[0]["event_id"]
    again = read_transcripts([path], team="t").events[0]["event_id"]
    assert first == again
    if isinstance(expected, str):
        assert first == expected
    else:
        assert expected.match(first)


@pytest.mark.parametrize(
    ("relative", "tags"),
    [
        ("projects/-home-dev-x/s.jsonl", {"project": "-home-dev-x"}),
        (
            "projects/-home-dev-x/s/subagents/agent-1.jsonl",
            {"project": "-home-dev-x", "subagent": "true"},
        ),
        ("loose/s.jsonl", {}),
        ("loose/subagents/agent-1.jsonl", {"subagent": "true"}),
    ],
)
def test_tags_from_layout(tmp_path: Path, relative: str, tags: dict[str, str]) -> None:
    path = _write(tmp_path / relative, _assistant("msg_01T", 1))
    assert read_transcripts([path], team="t").events[0]["tags"] == tags


def test_non_usage_records_ignored(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "s.jsonl",
        {"type": "summary", "summary": "Refactor the parser", "leafUuid": "x"},
        {"type": "user", "message": {"role": "user", "content": "Refactor the parser"}},
        {"type": "system", "content": "hook ran", "timestamp": "2026-11-05T08:00:00Z"},
        {"type": "file-history-snapshot", "messageId": "x", "snapshot": {}},
        "",
        _assistant("msg_01Only", 4),
    )
    result = read_transcripts([path], team="t")
    assert (result.lines, result.responses, result.skipped_malformed) == (5, 1, 0)


def test_empty_folder(tmp_path: Path) -> None:
    result = read_transcripts([tmp_path], team="t")
    assert result == ImportResult()


def test_missing_path_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_transcripts([tmp_path / "nope"], team="t")


def test_blank_team_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="team"):
        read_transcripts([tmp_path], team=" ")


def test_future_events_fail_validation(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.jsonl", _assistant("msg_01F", 1))
    events = read_transcripts([path], team="t").events
    with pytest.raises(ValueError, match="future"):
        validate_events(events, now=datetime(2026, 1, 1, tzinfo=UTC))


def test_per_session_grouping_of_samples(samples: ImportResult) -> None:
    per_session: dict[str, int] = defaultdict(int)
    for event in samples.events:
        per_session[event["session"]] += 1
    assert dict(per_session) == {S1: 11, S2: 4}
