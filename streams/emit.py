"""Emitting usage events to `meterline.usage`, keyed by team.

This is what an agent harness (or `meterline emit`, `import`, `simulate`) uses.
The key is the team, so a team's events meet on one partition.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from kafka import KafkaProducer

from streams import json
from streams.settings import Settings

logger = logging.getLogger(__name__)


class Emitter:
    """A Kafka producer for usage events; use as a context manager."""

    def __init__(self, settings: Settings, *, topic: str | None = None) -> None:
        self.topic = topic or settings.topic_usage
        self.producer = KafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            client_id="meterline-emit",
            acks="all",
            linger_ms=20,
            batch_size=256 * 1024,
            compression_type="lz4",
            retries=10,
            max_in_flight_requests_per_connection=1,
            # Let oversized events reach the worker, which dead-letters them
            # with a reason, rather than failing here without a trace.
            max_request_size=2 * settings.max_message_bytes,
        )
        self.sent = 0

    def __enter__(self) -> Emitter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def send(self, event: dict[str, Any]) -> None:
        """Queue one event (a dict of the contract); keyed by its team."""
        team = event.get("team")
        # The worker strips whitespace from the team, and checks key == team.
        key = team.strip().encode() if isinstance(team, str) else None
        self.send_raw(key, json.dumps(event))

    def send_raw(self, key: bytes | None, value: bytes) -> None:
        """Queue arbitrary bytes (tests and replays use this)."""
        self.producer.send(self.topic, key=key, value=value)
        self.sent += 1

    def send_all(self, events: Iterable[dict[str, Any]]) -> int:
        """Queue every event and flush; returns how many were sent."""
        before = self.sent
        for event in events:
            self.send(event)
        self.flush()
        return self.sent - before

    def flush(self) -> None:
        """Block until every queued event is acknowledged by the broker."""
        self.producer.flush()

    def close(self) -> None:
        """Flush and close the producer."""
        self.producer.flush()
        self.producer.close()
