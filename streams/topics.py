"""Kafka topics meterline owns, created explicitly with their settings."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from streams.settings import Settings

logger = logging.getLogger(__name__)

#: Usage and its outputs are kept 7 days: long enough to replay into a rebuilt
#: warehouse after a week-long outage, short enough for a laptop's disk.
RETENTION_MS = 7 * 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic: name, partition count and broker-side configuration."""

    name: str
    partitions: int
    config: dict[str, str]


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic the pipeline needs."""
    keep = {"retention.ms": str(RETENTION_MS)}
    compact = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}
    n = settings.usage_partitions
    limit = settings.max_message_bytes
    return [
        # Keyed by team: a team's events meet in one partition. Records up to
        # twice the accepted size get in, so the worker can dead-letter them.
        TopicSpec(settings.topic_usage, n, {**keep, **_max_bytes(2 * limit)}),
        TopicSpec(settings.topic_accepted, n, {**keep, **_max_bytes(3 * limit)}),
        # A dead letter holds the original bytes in base64 (4/3 of the size).
        TopicSpec(
            settings.topic_dlq,
            1,
            {
                "retention.ms": str(4 * RETENTION_MS),
                **_max_bytes(OUTPUT_FACTOR * limit),
            },
        ),
        TopicSpec(settings.topic_breaches, 3, {"retention.ms": "-1"}),
        TopicSpec(settings.topic_budgets, 1, compact),
    ]


#: The worker's outputs may be this many times the largest accepted input.
OUTPUT_FACTOR = 4


def _max_bytes(size: int) -> dict[str, str]:
    return {"max.message.bytes": str(size)}


def admin(settings: Settings) -> KafkaAdminClient:
    """An admin client for the configured cluster."""
    return KafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, client_id="meterline-admin"
    )


def ensure_topics(settings: Settings) -> list[str]:
    """Create missing topics; returns the names created (existing ones are kept)."""
    client = admin(settings)
    try:
        existing = set(client.list_topics())
        missing = [s for s in topic_specs(settings) if s.name not in existing]
        created: list[str] = []
        for spec in missing:
            try:
                client.create_topics(
                    [
                        NewTopic(
                            spec.name,
                            spec.partitions,
                            settings.replication_factor,
                            topic_configs=spec.config,
                        )
                    ]
                )
                created.append(spec.name)
                logger.info(
                    "created topic %s with %s partitions", spec.name, spec.partitions
                )
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        client.close()


def consumer_lag(settings: Settings, group: str, topics: list[str]) -> int:
    """Records in `topics` not yet committed by consumer group `group`."""
    client = admin(settings)
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False
    )
    try:
        tps = [
            TopicPartition(t, p)
            for t in topics
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        ends = consumer.end_offsets(tps)
        committed = client.list_group_offsets({group: None}).get(group, {})
        return sum(
            ends[tp] - (committed[tp].offset if tp in committed else 0) for tp in tps
        )
    finally:
        consumer.close()
        client.close()


def wait_drained(
    settings: Settings,
    *,
    timeout_s: float = 120.0,
    on_progress: Callable[[int, int], None] | None = None,
) -> bool:
    """Wait until worker and sink have committed everything; False on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        worker = consumer_lag(settings, settings.app_id, [settings.topic_usage])
        sink = consumer_lag(settings, settings.sink_group, settings.sink_topics)
        if on_progress is not None:
            on_progress(worker, sink)
        if worker == 0 and sink == 0:
            return True
        time.sleep(1.0)
    return False
