"""Reaching the warehouse: clickhouse-connect over HTTP, and schema migrations.

The embedded warehouse (chdb behind `meterline warehouse serve`) and a real
ClickHouse server are reached the same way, from `METERLINE_CLICKHOUSE_URL`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.exceptions import ClickHouseError

from streams.errors import WarehouseError
from streams.settings import Settings

logger = logging.getLogger(__name__)

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def connect(settings: Settings, *, database: str | None = "", **kwargs: Any) -> Any:
    """A clickhouse-connect client; `database=None` connects without one.

    Sessions are off: one client may then serve several threads' queries.
    """
    db = settings.clickhouse_database if database == "" else database
    try:
        return clickhouse_connect.get_client(
            dsn=settings.clickhouse_url,
            username=settings.clickhouse_user,
            password=settings.clickhouse_password.get_secret_value(),
            database=db or "__default__",
            autogenerate_session_id=False,
            **kwargs,
        )
    except ClickHouseError as exc:
        raise WarehouseError(
            f"cannot reach ClickHouse at {settings.clickhouse_url}: {exc}. "
            "Is the warehouse running (`meterline up`)?"
        ) from exc


@dataclass(frozen=True, slots=True)
class Migration:
    """One versioned schema change."""

    version: int
    name: str
    statements: list[str]


def load_migrations(directory: Path) -> list[Migration]:
    """The migration files in version order."""
    out = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if match is None:
            continue
        out.append(
            Migration(int(match.group(1)), path.stem, split_sql(path.read_text()))
        )
    return out


def split_sql(text: str) -> list[str]:
    """Statements of a migration: split at semicolons that end a line."""
    body = "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("--")
    )
    return [s.strip() for s in re.split(r";\s*$", body, flags=re.M) if s.strip()]


def migrate(settings: Settings) -> list[str]:
    """Create the database and apply pending migrations; returns those applied."""
    db = settings.clickhouse_database
    root = connect(settings, database=None)
    root.command(f"CREATE DATABASE IF NOT EXISTS `{db}`")
    client = connect(settings)
    client.command(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, name String, "
        "applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
        "ENGINE = MergeTree ORDER BY version"
    )
    done = {
        row[0]
        for row in client.query("SELECT version FROM schema_migrations").result_rows
    }
    applied = []
    for migration in load_migrations(settings.migrations_dir):
        if migration.version in done:
            continue
        for statement in migration.statements:
            client.command(statement)
        client.insert(
            "schema_migrations",
            [[migration.version, migration.name]],
            column_names=["version", "name"],
        )
        logger.info("applied migration %s", migration.name)
        applied.append(migration.name)
    return applied
