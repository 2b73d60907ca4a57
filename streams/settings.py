"""Every setting meterline reads, in one frozen object.

Each field maps to an environment variable `METERLINE_<FIELD>` (for example
`METERLINE_KAFKA_BOOTSTRAP`). A `.env` file in the working directory is read too.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """meterline's configuration; units are in the field names or descriptions."""

    model_config = SettingsConfigDict(
        env_prefix="METERLINE_", env_file=".env", extra="ignore", frozen=True
    )

    var_dir: Path = Field(
        Path("var"), description="Local state: broker data, warehouse, logs, pids."
    )

    # Kafka
    kafka_bootstrap: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, comma separated."
    )
    kafka_libs_dir: Path = Field(
        Path("var/kafka/libs"), description="Jars of the local broker (`make kafka`)."
    )
    kafka_port: int = Field(9092, description="Port of the local broker (`up`).")
    kafka_controller_port: int = Field(
        9093, description="Port of the local broker's KRaft controller."
    )
    topic_prefix: str = Field("meterline", description="Prefix of every topic name.")
    usage_partitions: int = Field(6, ge=1, description="Partitions of the usage topic.")
    replication_factor: int = Field(1, ge=1, description="Replicas of each topic.")
    max_message_bytes: int = Field(
        1_048_576, ge=1024, description="Largest usage message accepted, in bytes."
    )

    # ClickHouse
    clickhouse_url: str = Field(
        "http://127.0.0.1:8123",
        description="ClickHouse HTTP endpoint: the embedded warehouse or a server.",
    )
    clickhouse_user: str = Field("default", description="ClickHouse user.")
    clickhouse_password: SecretStr = Field(
        SecretStr(""), description="ClickHouse password."
    )
    clickhouse_database: str = Field("meterline", description="ClickHouse database.")
    migrations_dir: Path = Field(
        Path(__file__).resolve().parents[1] / "deploy" / "clickhouse" / "migrations",
        description="Folder of the versioned ClickHouse migrations (NNNN_name.sql).",
    )
    warehouse_host: str = Field(
        "127.0.0.1", description="Address the embedded warehouse listens on."
    )
    warehouse_port: int = Field(8123, description="Port of the embedded warehouse.")

    # Worker
    app_id: str = Field("meterline-worker", description="Faust app id (group id).")
    worker_web_port: int = Field(
        6066, description="Port of the worker's status endpoint (live totals)."
    )
    dedupe_horizon_s: int = Field(
        6 * 3600,
        ge=60,
        description="How long, in seconds after it was first seen, an event id is "
        "remembered for de-duplication.",
    )
    period_grace_s: int = Field(
        3600,
        ge=0,
        description="Seconds after a period ends during which late events still count "
        "toward it; later ones are accepted and stored but flagged `late_period`.",
    )
    future_skew_s: int = Field(
        300, ge=0, description="How far in the future (seconds) an event may be."
    )
    budgets_file: Path | None = Field(
        None, description="Default budgets file for `meterline budgets apply`."
    )
    price_overrides_file: Path | None = Field(
        None, description="YAML of negotiated or self-hosted prices (per MTok, USD)."
    )

    # Sink
    sink_group: str = Field("meterline-sink", description="Consumer group of the sink.")
    sink_batch_rows: int = Field(
        20_000, ge=1, description="Flush a batch at this many rows."
    )
    sink_batch_seconds: float = Field(
        1.0, gt=0, description="Flush a batch at least this often, in seconds."
    )

    @property
    def topic_usage(self) -> str:
        return f"{self.topic_prefix}.usage"

    @property
    def topic_accepted(self) -> str:
        return f"{self.topic_prefix}.usage.accepted"

    @property
    def topic_dlq(self) -> str:
        return f"{self.topic_prefix}.usage.dlq"

    @property
    def topic_breaches(self) -> str:
        return f"{self.topic_prefix}.breaches"

    @property
    def topic_budgets(self) -> str:
        return f"{self.topic_prefix}.budgets"

    @property
    def sink_topics(self) -> list[str]:
        """The worker's outputs, which the sink moves into ClickHouse."""
        return [self.topic_accepted, self.topic_breaches, self.topic_dlq]

    @property
    def sink_ready_file(self) -> Path:
        """Written by the sink (its pid) once it has joined its group."""
        return self.var_dir / "run" / "sink.ready"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
