"""Import Claude Code session transcripts as canonical usage events.

Claude Code keeps one JSONL transcript per session, normally at
``~/.claude/projects/<project-dir>/<session-uuid>.jsonl``; subagents get their
own files under ``<session-uuid>/subagents/agent-*.jsonl``. Every assistant
record carries the Anthropic ``usage`` object of the API response it belongs
to. `read_transcripts` folds those records into exactly one event per response:

* A streamed response is written as one line per content block. The lines share
  ``message.id`` and ``requestId``, and ``output_tokens`` may grow from one to
  the next, so the lines are merged keeping the largest value of each counter.
* A resumed session copies earlier history into its new file; the copies carry
  the same ``message.id`` and are merged the same way, so they count once.
* Rows whose model is ``<synthetic>`` are written by Claude Code itself (for
  example "No response requested."); they were never sent to the API and are
  dropped.
* A line that is not valid JSON or not a usable record (typically the
  half-written last line of a live transcript) is skipped with a warning that
  names the file and line number.

Choice of ``ts``: an event's time is the earliest timestamp among its lines
(the first line of the response), not the last. The first line is written as
soon as the response starts streaming and never changes afterwards, so
importing a partially written transcript and later the complete one, or an
original and its resumed copy in either order, gives the same ``ts`` as well as
the same ``event_id``. The cost is that ``ts`` precedes the end of the response
by its streaming time, normally seconds.

Token buckets follow Anthropic's conventions: ``input_tokens``,
``cache_read_input_tokens`` and ``cache_creation_input_tokens`` are disjoint,
and thinking is counted inside ``output_tokens``. Claude Code does not report
the thinking share, so all output goes to ``out_visible``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from schemas.usage import SCHEMA_VERSION, UsageEvent
from streams import json

logger = logging.getLogger(__name__)

HARNESS = "claude-code"
PROVIDER = "anthropic"
USAGE_SCHEMA = "anthropic.messages"
DEFAULT_AGENT = "claude-code"
EVENT_ID_PREFIX = "claude-code:"
SYNTHETIC_MODEL = "<synthetic>"


@dataclass
class ImportResult:
    """What one `read_transcripts` call produced and skipped.

    `events` are plain dicts ready for `UsageEvent.model_validate`, ordered by
    ``ts`` then ``event_id``. `lines` counts the non-blank lines read;
    `duplicate_lines` counts usage lines merged into a response already seen
    (further blocks of a streamed response, and copies in resumed sessions).
    """

    events: list[dict[str, Any]] = field(default_factory=list)
    files: int = 0
    lines: int = 0
    responses: int = 0
    skipped_synthetic: int = 0
    skipped_malformed: int = 0
    duplicate_lines: int = 0


class _MalformedRecordError(ValueError):
    """A line that cannot be used as a usage record; the message says why."""


@dataclass(frozen=True)
class _Counts:
    """The counters of one usage object (or the maxima over several)."""

    uncached: int
    cache_read: int
    cache_write: int
    output: int
    write_5m: int
    write_1h: int
    has_breakdown: bool

    def maxed(self, other: _Counts) -> _Counts:
        return _Counts(
            uncached=max(self.uncached, other.uncached),
            cache_read=max(self.cache_read, other.cache_read),
            cache_write=max(self.cache_write, other.cache_write),
            output=max(self.output, other.output),
            write_5m=max(self.write_5m, other.write_5m),
            write_1h=max(self.write_1h, other.write_1h),
            has_breakdown=self.has_breakdown or other.has_breakdown,
        )

    @property
    def rank(self) -> tuple[int, int]:
        """Orders the lines of one response: the most output, then most input."""
        return (self.output, self.uncached + self.cache_read + self.cache_write)

    def tokens(self) -> dict[str, int]:
        """The canonical disjoint buckets."""
        if self.has_breakdown:
            write_1h = self.write_1h
            # Whatever the 5m/1h breakdown does not explain has an unknown TTL,
            # which the contract files under in_cache_write.
            write = max(self.write_5m, self.cache_write - self.write_1h)
        else:
            write_1h = 0
            write = self.cache_write
        return {
            "in_uncached": self.uncached,
            "in_cache_read": self.cache_read,
            "in_cache_write": write,
            "in_cache_write_1h": write_1h,
            "out_visible": self.output,
            "out_reasoning": 0,
        }


@dataclass(frozen=True)
class _Row:
    """One usage-bearing line."""

    event_id: str
    ts: datetime
    order: tuple[datetime, str, int]  # (ts, file, line number): earliest wins
    session: str | None
    model: str | None
    usage: dict[str, Any]
    counts: _Counts
    tags: Mapping[str, str]


@dataclass
class _Response:
    """The lines of one API response seen so far."""

    first: _Row  # the earliest line: ts, session, model and tags
    best: _Row  # the line with the most output: raw_usage
    counts: _Counts  # the maxima over every line

    def merge(self, row: _Row) -> None:
        self.counts = self.counts.maxed(row.counts)
        if row.order < self.first.order:
            self.first = row
        if row.counts.rank > self.best.counts.rank or (
            row.counts.rank == self.best.counts.rank and row.order < self.best.order
        ):
            self.best = row


def read_transcripts(
    paths: Iterable[Path],
    *,
    team: str,
    agent: str | None = None,
    user: str | None = None,
    org: str | None = None,
) -> ImportResult:
    """Read Claude Code transcripts into one usage event per API response.

    `paths` may name files or directories; directories are searched
    recursively for ``*.jsonl``. Files are read in sorted order and each file
    once, so the result does not depend on how the paths were given. A path
    that does not exist raises `FileNotFoundError`; unreadable files and bad
    lines are logged and skipped.
    """
    if not team.strip():
        raise ValueError("team must be a non-empty string")
    result = ImportResult()
    responses: dict[str, _Response] = {}
    for path in _transcript_files(paths):
        result.files += 1
        _read_file(path, responses, result)

    ordered = sorted(responses.values(), key=lambda r: (r.first.ts, r.first.event_id))
    result.events = [
        _event(response, team=team, agent=agent, user=user, org=org)
        for response in ordered
    ]
    result.responses = len(result.events)
    logger.info(
        "claude-code import: %s files, %s lines, %s responses, %s synthetic "
        "and %s malformed lines skipped, %s duplicate lines merged",
        result.files,
        result.lines,
        result.responses,
        result.skipped_synthetic,
        result.skipped_malformed,
        result.duplicate_lines,
    )
    return result


def validate_events(
    events: Iterable[Mapping[str, Any]], *, now: datetime | None = None
) -> list[UsageEvent]:
    """Validate event dicts as `UsageEvent`s.

    `now` is the clock for the schema's future-timestamp check (the current
    time when omitted).
    """
    context = {"now": now} if now is not None else None
    return [UsageEvent.model_validate(event, context=context) for event in events]


def _transcript_files(paths: Iterable[Path]) -> list[Path]:
    found: set[Path] = set()
    for given in paths:
        path = Path(os.path.abspath(given))
        if path.is_dir():
            found.update(f for f in path.rglob("*.jsonl") if f.is_file())
        elif path.exists():
            found.add(path)
        else:
            raise FileNotFoundError(f"no such transcript file or directory: {given}")
    return sorted(found)


def _file_tags(path: Path) -> dict[str, str]:
    tags: dict[str, str] = {}
    folders = path.parts[:-1]
    # Claude Code's project directory is the one right below the nearest
    # "projects" folder (~/.claude/projects/<project-dir>/...).
    for index in range(len(folders) - 2, -1, -1):
        if folders[index] == "projects":
            tags["project"] = folders[index + 1]
            break
    if path.parent.name == "subagents":
        tags["subagent"] = "true"
    return tags


def _read_file(
    path: Path, responses: dict[str, _Response], result: ImportResult
) -> None:
    tags = _file_tags(path)
    name = str(path)
    try:
        with path.open("rb") as lines:
            for lineno, raw in enumerate(lines, start=1):
                line = raw.strip()
                if not line:
                    continue
                result.lines += 1
                try:
                    row = _parse_line(line, name, lineno, tags, result)
                except _MalformedRecordError as exc:
                    result.skipped_malformed += 1
                    logger.warning(
                        "%s:%s: skipping malformed line: %s", path, lineno, exc
                    )
                    continue
                if row is None:
                    continue
                response = responses.get(row.event_id)
                if response is None:
                    responses[row.event_id] = _Response(
                        first=row, best=row, counts=row.counts
                    )
                else:
                    result.duplicate_lines += 1
                    response.merge(row)
    except OSError as exc:
        logger.warning("%s: cannot read transcript, skipping the rest: %s", path, exc)


def _parse_line(
    line: bytes,
    name: str,
    lineno: int,
    tags: Mapping[str, str],
    result: ImportResult,
) -> _Row | None:
    """The usage row on `line`, or None for lines that carry no usage."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise _MalformedRecordError(f"not JSON ({exc})") from None
    if not isinstance(record, dict):
        raise _MalformedRecordError("not a JSON object")
    if record.get("type") != "assistant":
        return None
    message = record.get("message")
    if not isinstance(message, dict):
        raise _MalformedRecordError("assistant record without a message object")
    usage = message.get("usage")
    if message.get("model") == SYNTHETIC_MODEL:
        result.skipped_synthetic += 1
        if isinstance(usage, dict) and _reports_tokens(usage):
            logger.warning(
                "%s:%s: dropping a %s row that reports token usage",
                name,
                lineno,
                SYNTHETIC_MODEL,
            )
        return None
    if usage is None:
        return None
    if not isinstance(usage, dict):
        raise _MalformedRecordError("message.usage is not an object")
    ts = _timestamp(record.get("timestamp"))
    return _Row(
        event_id=_event_id(message.get("id"), record.get("requestId"), line),
        ts=ts,
        order=(ts, name, lineno),
        session=_text(record.get("sessionId")),
        model=_text(message.get("model")),
        usage=usage,
        counts=_counts(usage),
        tags=tags,
    )


def _counts(usage: Mapping[str, Any]) -> _Counts:
    breakdown = usage.get("cache_creation")
    if breakdown is not None and not isinstance(breakdown, dict):
        raise _MalformedRecordError("usage.cache_creation is not an object")
    return _Counts(
        uncached=_count(usage, "input_tokens"),
        cache_read=_count(usage, "cache_read_input_tokens"),
        cache_write=_count(usage, "cache_creation_input_tokens"),
        output=_count(usage, "output_tokens"),
        write_5m=_count(breakdown or {}, "ephemeral_5m_input_tokens"),
        write_1h=_count(breakdown or {}, "ephemeral_1h_input_tokens"),
        has_breakdown=breakdown is not None,
    )


def _reports_tokens(usage: Mapping[str, Any]) -> bool:
    return any(
        isinstance(value, int) and not isinstance(value, bool) and value > 0
        for key, value in usage.items()
        if key.endswith("_tokens")
    )


def _count(obj: Mapping[str, Any], key: str) -> int:
    value = obj.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _MalformedRecordError(f"{key} is {value!r}, not a non-negative integer")
    return value


def _timestamp(value: Any) -> datetime:
    if not isinstance(value, str):
        raise _MalformedRecordError("missing timestamp")
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise _MalformedRecordError(f"bad timestamp {value!r}") from None
    if ts.tzinfo is None:
        raise _MalformedRecordError(f"timestamp {value!r} has no UTC offset")
    return ts.astimezone(UTC)


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _event_id(message_id: Any, request_id: Any, line: bytes) -> str:
    key = _text(message_id) or _text(request_id)
    if key is None:
        key = "sha256:" + hashlib.sha256(line).hexdigest()[:32]
    return EVENT_ID_PREFIX + key


def _format_ts(ts: datetime) -> str:
    """RFC 3339 in UTC with a Z, in milliseconds as Claude Code writes them."""
    timespec = "milliseconds" if ts.microsecond % 1000 == 0 else "microseconds"
    return ts.isoformat(timespec=timespec).replace("+00:00", "Z")


def _raw_usage(row: _Row, counts: _Counts) -> dict[str, Any]:
    """The best line's usage, raised to the maxima if another line had more.

    Normally the line with the most output also has every other maximum and
    its usage object is kept as written; otherwise the counters are patched so
    that re-normalising `raw_usage` reproduces the event's tokens.
    """
    raw = dict(row.usage)
    if row.counts == counts:
        return raw
    raw["input_tokens"] = counts.uncached
    raw["cache_read_input_tokens"] = counts.cache_read
    raw["cache_creation_input_tokens"] = counts.cache_write
    raw["output_tokens"] = counts.output
    if counts.has_breakdown:
        breakdown = raw.get("cache_creation")
        raw["cache_creation"] = {
            **(breakdown if isinstance(breakdown, dict) else {}),
            "ephemeral_5m_input_tokens": counts.write_5m,
            "ephemeral_1h_input_tokens": counts.write_1h,
        }
    return raw


def _event(
    response: _Response,
    *,
    team: str,
    agent: str | None,
    user: str | None,
    org: str | None,
) -> dict[str, Any]:
    first = response.first
    event: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "event_id": first.event_id,
        "ts": _format_ts(first.ts),
        "team": team,
        "agent": agent or DEFAULT_AGENT,
        "harness": HARNESS,
        "provider": PROVIDER,
        "tokens": response.counts.tokens(),
        "raw_usage": _raw_usage(response.best, response.counts),
        "usage_schema": USAGE_SCHEMA,
        "tags": dict(first.tags),
    }
    optional = {
        "org": org,
        "user": user,
        "session": first.session,
        "model": first.model,
    }
    event.update({key: value for key, value in optional.items() if value is not None})
    return event
