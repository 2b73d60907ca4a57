"""Publishing budgets to the compacted budgets topic, and reading them back.

The topic is the source of truth: key = budget id, value = the budget as JSON,
and a tombstone (null value) removes a budget. Workers follow the topic and pick
up changes without a restart.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import yaml
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from pydantic import ValidationError

from schemas.budget import Budget, BudgetFile
from streams import json
from streams.errors import ConfigError
from streams.settings import Settings
from streams.topics import ensure_topics

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What `apply_budgets` changed."""

    published: int
    removed: list[str]


def load_budget_file(path: Path) -> BudgetFile:
    """Read and validate a budgets YAML file; errors say where and why."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"budgets file {path} does not exist") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"budgets file {path} is not valid YAML: {exc}") from exc
    try:
        return BudgetFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise ConfigError(f"budgets file {path} is invalid: {problems}") from exc


def parse_budget_record(key: str, value: bytes) -> Budget | None:
    """The budget a record of the budgets topic holds, or None (logged) when it
    is invalid or keyed by another id. One bad record never stops the others."""
    try:
        budget = Budget.model_validate(json.loads(value))
    except Exception as exc:
        logger.error("budget record %s is invalid and ignored: %s", key, exc)
        return None
    if budget.id != key:
        logger.error(
            "budget record keyed %s holds budget %s; ignored (key must be the id)",
            key,
            budget.id,
        )
        return None
    return budget


def read_budgets(settings: Settings) -> list[Budget]:
    """The budgets in force, read from the start of the compacted topic."""
    valid, _ = _read_topic(settings)
    return [valid[k] for k in sorted(valid)]


def _read_topic(settings: Settings) -> tuple[dict[str, Budget], set[str]]:
    """Valid budgets by id, and every live key (invalid records included)."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        client_id="meterline-budgets",
    )
    try:
        partitions = consumer.partitions_for_topic(settings.topic_budgets) or set()
        tps = [TopicPartition(settings.topic_budgets, p) for p in sorted(partitions)]
        if not tps:
            return {}, set()
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        current: dict[str, Budget] = {}
        live: set[str] = set()
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            for records in consumer.poll(timeout_ms=1000).values():
                for record in records:
                    if record.key is None:
                        continue
                    key = record.key.decode("utf-8", "replace")
                    if record.value is None:
                        current.pop(key, None)
                        live.discard(key)
                        continue
                    live.add(key)
                    # An invalid update leaves the last valid budget in force,
                    # as the worker does.
                    budget = parse_budget_record(key, record.value)
                    if budget is not None:
                        current[key] = budget
        return current, live
    finally:
        consumer.close()


def apply_budgets(settings: Settings, budget_file: BudgetFile) -> ApplyResult:
    """Make the topic hold exactly the budgets of `budget_file`."""
    ensure_topics(settings)
    # Every live key, so records that never validated are removed as well.
    _, existing = _read_topic(settings)
    wanted = {b.id for b in budget_file.budgets}
    removed = sorted(existing - wanted)
    producer = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id="meterline-budgets",
        acks="all",
    )
    try:
        for budget in budget_file.budgets:
            producer.send(
                settings.topic_budgets,
                key=budget.id.encode(),
                value=json.dumps(budget.model_dump(mode="json")),
            )
        for budget_id in removed:
            producer.send(settings.topic_budgets, key=budget_id.encode(), value=None)
        producer.flush()
    finally:
        producer.close()
    logger.info("published %s budgets, removed %s", len(wanted), len(removed))
    return ApplyResult(len(budget_file.budgets), removed)
