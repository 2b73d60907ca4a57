"""The ClickHouse sink: accepted events, breaches and dead letters, exactly once.

Its own consumer group (kafka-python) reads the worker's outputs and writes them
to `usage_events`, `budget_breaches` and `dead_letters`. One flush:

1. gather records per topic-partition until `sink_batch_rows` or
   `sink_batch_seconds`;
2. insert each partition's block with an `insert_deduplication_token` naming its
   topic, partition and offset range, so a retried block is stored once;
3. commit the offsets only after every insert succeeded.

A crash before step 3 replays the same offsets, which rebuild the same blocks
with the same tokens. Usage rows whose event id is already stored (a worker
replay) are dropped before the insert.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata
from tenacity import (
    before_sleep_log,
    retry,
    retry_if_exception_type,
    wait_exponential_jitter,
)

from schemas.usage import BUCKETS
from streams import json
from streams.accounting import to_ms
from streams.settings import Settings
from streams.warehouse.client import connect

logger = logging.getLogger(__name__)

USAGE_COLUMNS = [
    "event_id", "ts", "ingested_at", "org", "team", "agent", "session", "user",
    "harness", "provider", "model", *BUCKETS, "tokens_total", "cost_usd",
    "cost_source", "price_model", "price_provider", "flags", "tags", "raw_usage",
    "usage_schema", "extra", "source_partition", "source_offset",
]  # fmt: skip
BREACH_COLUMNS = [
    "breach_id", "kind", "budget_id", "team", "period", "timezone", "period_start",
    "period_end", "measure", "threshold", "limit_value", "used", "ratio", "severity",
    "triggering_event_id", "event_ts", "detected_at",
]  # fmt: skip
DEAD_LETTER_COLUMNS = [
    "failed_at", "reason", "detail", "topic", "partition", "offset", "event_id",
    "team", "key_b64", "payload_b64",
]  # fmt: skip

_CONTRACT_FIELDS = {
    "schema_version", "event_id", "ts", "org", "team", "agent", "session", "user",
    "harness", "provider", "model", "tokens", "cost_usd", "tags", "raw_usage",
    "usage_schema",
}  # fmt: skip


def _dt(value: str) -> datetime:
    return datetime.fromisoformat(value)


def usage_row(record: dict[str, Any]) -> list[Any]:
    """A `usage_events` row from an accepted-event record."""
    event = record["event"]
    tokens = event.get("tokens") or {}
    buckets = [int(tokens.get(b, 0)) for b in BUCKETS]
    extra = {k: v for k, v in event.items() if k not in _CONTRACT_FIELDS}
    cost = record.get("cost_usd")
    return [
        event["event_id"],
        _dt(event["ts"]),
        _dt(record["ingested_at"]),
        event.get("org") or "",
        event["team"],
        event.get("agent") or "",
        event.get("session") or "",
        event.get("user") or "",
        event.get("harness") or "",
        event.get("provider") or "",
        event.get("model") or "",
        *buckets,
        sum(buckets),
        None if cost is None else Decimal(cost),
        record["cost_source"],
        record.get("price_model") or "",
        record.get("price_provider") or "",
        list(record.get("flags") or []),
        dict(event.get("tags") or {}),
        json.dumps(event["raw_usage"]).decode() if event.get("raw_usage") else "",
        event.get("usage_schema") or "",
        json.dumps(extra).decode() if extra else "",
        int(record["source_partition"]),
        int(record["source_offset"]),
    ]


def breach_row(record: dict[str, Any]) -> list[Any]:
    """A `budget_breaches` row from a breach record."""
    return [
        record["breach_id"],
        record["kind"],
        record["budget_id"],
        record["team"],
        record["period"],
        record["timezone"],
        _dt(record["period_start"]),
        _dt(record["period_end"]),
        record["measure"],
        Decimal(record["threshold"]),
        Decimal(record["limit"]),
        Decimal(record["used"]),
        Decimal(record["ratio"]),
        record["severity"],
        record["triggering_event_id"],
        _dt(record["event_ts"]),
        _dt(record["detected_at"]),
    ]


def dead_letter_row(record: dict[str, Any]) -> list[Any]:
    """A `dead_letters` row from a dead-letter record."""
    return [
        _dt(record["failed_at"]),
        record["reason"],
        record["detail"],
        record["topic"],
        int(record["partition"]),
        int(record["offset"]),
        record.get("event_id") or "",
        record.get("team") or "",
        record.get("key_b64") or "",
        record["payload_b64"],
    ]


@dataclass(frozen=True, slots=True)
class TableSpec:
    """Where one topic's records go, and what identifies a row.

    `key_sql` is the SQL expression of a row's identity and `key_of` computes
    it from a row; rows whose identity is already stored are not inserted
    again. `ts_column`, when set, names a column (the row's second value) that
    bounds the look-up to the batch's time range.
    """

    table: str
    columns: list[str]
    to_row: Callable[[dict[str, Any]], list[Any]]
    key_sql: str
    key_of: Callable[[list[Any]], str]
    ts_column: str | None = None


def table_specs(settings: Settings) -> dict[str, TableSpec]:
    """The topic to table mapping of the sink."""
    return {
        # A usage row is the acceptance of one input record: the worker re-sends
        # it after a crash (same id and source offset: dropped here), while a
        # retry past the worker's de-duplication horizon has a new source offset
        # and was counted by the worker, so it is stored too and both agree.
        settings.topic_accepted: TableSpec(
            "usage_events",
            USAGE_COLUMNS,
            usage_row,
            "concat(event_id, '/', toString(source_partition), '/', "
            "toString(source_offset))",
            lambda row: f"{row[0]}/{row[-2]}/{row[-1]}",
            "ts",
        ),
        settings.topic_breaches: TableSpec(
            "budget_breaches", BREACH_COLUMNS, breach_row, "breach_id", _first
        ),
        settings.topic_dlq: TableSpec(
            "dead_letters",
            DEAD_LETTER_COLUMNS,
            dead_letter_row,
            "concat(topic, '/', toString(partition), '/', toString(offset))",
            lambda row: f"{row[3]}/{row[4]}/{row[5]}",
        ),
    }


def _first(row: list[Any]) -> str:
    return str(row[0])


class Sink:
    """Moves the worker's output topics into ClickHouse."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tables = table_specs(settings)
        self.client = connect(settings)
        self.consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=settings.sink_group,
            client_id="meterline-sink",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=5000,
        )
        self.consumer.subscribe(list(self.tables))
        self.rows_written = 0
        self._stopping = False

    def stop(self, *_: object) -> None:
        """Ask the loop to finish its batch and return."""
        self._stopping = True

    def run(self, *, idle_exit_s: float | None = None) -> None:
        """Consume and flush until stopped (or idle for `idle_exit_s`)."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        logger.info(
            "sink writing %s to %s", list(self.tables), self.settings.clickhouse_url
        )
        # `meterline up` waits for this file to name our pid.
        ready = self.settings.sink_ready_file
        ready.unlink(missing_ok=True)
        last_data = time.monotonic()
        try:
            while not self._stopping:
                moved = self.run_once()
                if not ready.exists() and self.consumer.assignment():
                    ready.parent.mkdir(parents=True, exist_ok=True)
                    ready.write_text(str(os.getpid()))
                now = time.monotonic()
                if moved:
                    last_data = now
                elif idle_exit_s is not None and now - last_data > idle_exit_s:
                    break
        finally:
            ready.unlink(missing_ok=True)
            self.consumer.close(autocommit=False)

    def run_once(self) -> int:
        """Gather one batch, write it, commit it; returns the records handled."""
        s = self.settings
        batch: dict[TopicPartition, list[Any]] = defaultdict(list)
        count = 0
        deadline = time.monotonic() + s.sink_batch_seconds
        while count < s.sink_batch_rows and not self._stopping:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            polled = self.consumer.poll(
                timeout_ms=left_ms, max_records=s.sink_batch_rows - count
            )
            for tp, records in polled.items():
                batch[tp].extend(records)
                count += len(records)
        if not batch:
            return 0
        self._flush(batch)
        return count

    def _flush(self, batch: dict[TopicPartition, list[Any]]) -> None:
        offsets = {}
        for tp in sorted(batch, key=lambda t: (t.topic, t.partition)):
            records = batch[tp]
            self._write_block(tp, records)
            offsets[tp] = OffsetAndMetadata(records[-1].offset + 1, "", -1)
        self.consumer.commit(offsets)

    def _write_block(self, tp: TopicPartition, records: Sequence[Any]) -> None:
        spec = self.tables[tp.topic]
        rows = []
        for record in records:
            try:
                rows.append(spec.to_row(json.loads(record.value)))
            except (ValueError, KeyError, TypeError):
                logger.exception(
                    "record %s[%s]@%s cannot be turned into a %s row; skipped",
                    record.topic,
                    record.partition,
                    record.offset,
                    spec.table,
                )
        rows = self._drop_stored(spec, rows)
        if not rows:
            return
        token = f"{tp.topic}:{tp.partition}:{records[0].offset}-{records[-1].offset}"
        self._insert(spec.table, rows, spec.columns, token)
        self.rows_written += len(rows)
        logger.debug("wrote %s rows to %s (token %s)", len(rows), spec.table, token)

    def _drop_stored(self, spec: TableSpec, rows: list[list[Any]]) -> list[list[Any]]:
        """Drop rows already stored (a replay upstream) or repeated in the batch."""
        if not rows:
            return rows
        keys = [spec.key_of(row) for row in rows]
        where = f"{spec.key_sql} IN %(keys)s"
        parameters: dict[str, Any] = {"keys": keys}
        if spec.ts_column is not None:
            stamps = [to_ms(row[1]) for row in rows]
            where += (
                f" AND {spec.ts_column} BETWEEN fromUnixTimestamp64Milli(%(lo)s, 'UTC')"
                " AND fromUnixTimestamp64Milli(%(hi)s, 'UTC')"
            )
            parameters.update(lo=min(stamps), hi=max(stamps))
        # Client-side binding (%(name)s), so any ClickHouse endpoint understands it.
        result = self.client.query(
            f"SELECT {spec.key_sql} FROM {spec.table} WHERE {where}",
            parameters=parameters,
        )
        seen = {r[0] for r in result.result_rows}
        fresh = []
        for key, row in zip(keys, rows, strict=True):
            if key not in seen:
                seen.add(key)
                fresh.append(row)
        if len(fresh) != len(rows):
            logger.info(
                "dropped %s rows already in %s", len(rows) - len(fresh), spec.table
            )
        return fresh

    @retry(
        wait=wait_exponential_jitter(initial=0.5, max=30),
        retry=retry_if_exception_type(Exception),
        before_sleep=before_sleep_log(logger, logging.WARNING),
    )
    def _insert(
        self, table: str, rows: list[list[Any]], columns: list[str], token: str
    ) -> None:
        # The same rows with the same token on every attempt: ClickHouse keeps one.
        self.client.insert(
            table,
            rows,
            column_names=columns,
            settings={"insert_deduplication_token": token, "async_insert": 0},
        )


def run_sink(settings: Settings) -> None:
    """Run the sink in the foreground until SIGTERM or SIGINT."""
    Sink(settings).run()
