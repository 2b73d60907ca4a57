"""The integration tier: a real Kafka broker and the embedded ClickHouse.

One stack per test session, on free loopback ports, with its own `var/` folder,
topic prefix, consumer groups and database, so runs never see each other.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.local import ROOT, Stack
from streams.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    run = uuid.uuid4().hex[:8]
    warehouse_port, kafka_port = free_port(), free_port()
    return Settings(
        var_dir=tmp_path_factory.mktemp("var"),
        kafka_libs_dir=Path(
            os.environ.get("METERLINE_KAFKA_LIBS_DIR", ROOT / "var" / "kafka" / "libs")
        ),
        kafka_port=kafka_port,
        kafka_controller_port=free_port(),
        kafka_bootstrap=f"127.0.0.1:{kafka_port}",
        warehouse_port=warehouse_port,
        clickhouse_url=f"http://127.0.0.1:{warehouse_port}",
        clickhouse_database=f"meterline_{run}",
        worker_web_port=free_port(),
        topic_prefix=f"it{run}",
        app_id=f"it{run}-worker",
        sink_group=f"it{run}-sink",
        usage_partitions=3,
        sink_batch_seconds=0.5,
    )


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Iterator[Stack]:
    stack = Stack(settings)
    try:
        stack.up(on_progress=lambda m: None)
        yield stack
    finally:
        stack.down(on_progress=lambda m: None)
        for name in ("kafka", "warehouse", "worker", "sink"):
            log = Path(stack.log_dir / f"{name}.log")
            if log.exists():
                print(f"--- tail of {name}.log ---")
                print("\n".join(log.read_text(errors="replace").splitlines()[-30:]))
