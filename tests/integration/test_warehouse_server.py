"""The warehouse HTTP server against clickhouse-connect and raw HTTP requests."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from streams.warehouse.server import WarehouseServer

pytestmark = pytest.mark.integration

COLUMNS = ["id", "at", "cost", "model", "labels"]
TABLE_DDL = """
CREATE TABLE {table} (
    id UInt64,
    at DateTime64(3, 'UTC'),
    cost Decimal(38, 12),
    model LowCardinality(String),
    labels Map(String, String)
) ENGINE = MergeTree ORDER BY id
SETTINGS non_replicated_deduplication_window = 1000
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WarehouseServer]:
    srv = WarehouseServer(tmp_path_factory.mktemp("warehouse") / "chdb", port=0)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def client(server: WarehouseServer) -> Iterator[Client]:
    ch = clickhouse_connect.get_client(
        host="127.0.0.1", port=server.port, username="default", password=""
    )
    try:
        yield ch
    finally:
        ch.close()


@pytest.fixture
def table(client: Client) -> str:
    database = f"db_{uuid.uuid4().hex[:8]}"
    client.command(f"CREATE DATABASE {database}")
    client.command(TABLE_DDL.format(table=f"{database}.usage"))
    return f"{database}.usage"


def rows(n: int, start: int = 0) -> list[list[Any]]:
    at = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    return [
        [i, at, Decimal("0.000123456789"), "gpt-x", {"team": f"t{i}"}]
        for i in range(start, start + n)
    ]


def http(
    server: WarehouseServer,
    path: str = "/",
    *,
    params: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    url = f"{server.url}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    request = urllib.request.Request(url, data=body)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, dict(err.headers), err.read()


def test_insert_and_query_round_trip(client: Client, table: str) -> None:
    client.insert(table, rows(3), column_names=COLUMNS)
    result = client.query(f"SELECT {', '.join(COLUMNS)} FROM {table} ORDER BY id")
    assert result.result_rows[1][0] == 1
    assert result.result_rows[1][1].replace(tzinfo=UTC) == rows(1)[0][1]
    assert result.result_rows[1][2] == Decimal("0.000123456789")
    assert result.result_rows[1][3] == "gpt-x"
    assert result.result_rows[1][4] == {"team": "t1"}
    assert client.command(f"SELECT count() FROM {table}") == 3


def test_insert_with_database_parameter(server: WarehouseServer, table: str) -> None:
    database, name = table.split(".")
    ch = clickhouse_connect.get_client(
        host="127.0.0.1", port=server.port, database=database, compress="zstd"
    )
    try:
        ch.insert(name, rows(2), column_names=COLUMNS)
        assert ch.command("SELECT currentDatabase()") == database
        assert ch.query(f"SELECT count() FROM {name}").result_rows == [(2,)]
    finally:
        ch.close()


def test_deduplication_token(client: Client, table: str) -> None:
    block = rows(5)
    for token in ("batch-1", "batch-1", "batch-2"):
        client.insert(
            table,
            block,
            column_names=COLUMNS,
            settings={"insert_deduplication_token": token},
        )
    assert client.command(f"SELECT count() FROM {table}") == 10


def test_error_carries_clickhouse_code(client: Client) -> None:
    with pytest.raises(DatabaseError) as info:
        client.query("SELECT * FROM no_such_db.no_such_table")
    assert info.value.code == 81 or info.value.code == 60
    assert "DB::Exception" in str(info.value)


def test_session_keeps_set_statements(server: WarehouseServer) -> None:
    ch = clickhouse_connect.get_client(host="127.0.0.1", port=server.port)
    try:
        ch.command("SET max_block_size = 1234")
        assert ch.command("SELECT getSetting('max_block_size')") == 1234
    finally:
        ch.close()


def test_async_client(server: WarehouseServer) -> None:
    async def run() -> list[Any]:
        ch = await clickhouse_connect.get_async_client(
            host="127.0.0.1", port=server.port, username="default", password=""
        )
        try:
            results = await asyncio.gather(
                *(ch.query(f"SELECT {i} + 1 AS n") for i in range(4))
            )
            return [r.result_rows[0][0] for r in results]
        finally:
            await ch.close()

    assert asyncio.run(run()) == [1, 2, 3, 4]


def test_ping(server: WarehouseServer) -> None:
    assert http(server, "/ping")[::2] == (200, b"Ok.\n")


def test_get_query(server: WarehouseServer) -> None:
    status, headers, body = http(server, params={"query": "SELECT 1"})
    assert (status, body) == (200, b"1\n")
    assert headers["X-ClickHouse-Format"] == "TabSeparated"
    assert headers["X-ClickHouse-Timezone"]
    assert json.loads(headers["X-ClickHouse-Summary"])["read_rows"] == "1"


def test_post_body_query_json_each_row(server: WarehouseServer) -> None:
    sql = b"SELECT number AS n FROM system.numbers LIMIT 2 FORMAT JSONEachRow"
    status, headers, body = http(server, body=sql)
    assert status == 200
    assert [json.loads(line) for line in body.splitlines()] == [{"n": 0}, {"n": 1}]
    assert headers["X-ClickHouse-Format"] == "JSONEachRow"


def test_post_insert_with_query_parameter(
    server: WarehouseServer, client: Client, table: str
) -> None:
    database, name = table.split(".")
    params = {
        "query": f"INSERT INTO {name} (id, model) FORMAT CSV",
        "database": database,
    }
    status, _, body = http(server, params=params, body=b"7,a\n8,b\n")
    assert (status, body) == (200, b"")
    assert client.command(f"SELECT sum(id) FROM {table}") == 15


def test_get_refuses_writes_and_reports_errors(server: WarehouseServer) -> None:
    status, headers, body = http(server, params={"query": "CREATE DATABASE nope"})
    assert status == 500
    assert headers["X-ClickHouse-Exception-Code"] == "164"
    assert body.startswith(b"Code: 164. DB::Exception:")
    status, headers, body = http(server, params={"query": "SELECT * FROM missing"})
    assert status == 404
    assert headers["X-ClickHouse-Exception-Code"] == "60"
    assert b"(UNKNOWN_TABLE)" in body


def test_unknown_path(server: WarehouseServer) -> None:
    assert http(server, "/nope")[0] == 404


def test_default_format_and_bind_params(server: WarehouseServer) -> None:
    params = {
        "query": "SELECT {x:UInt8} + 1 AS y",
        "param_x": "41",
        "default_format": "CSVWithNames",
    }
    assert http(server, params=params)[2] == b'"y"\n42\n'


def test_bare_root_answers_ok_and_database_header_is_honoured(
    server: WarehouseServer,
) -> None:
    with urllib.request.urlopen(f"{server.url}/", timeout=5) as response:
        assert response.read() == b"Ok.\n"
    request = urllib.request.Request(
        f"{server.url}/?query=SELECT+currentDatabase()",
        headers={"X-ClickHouse-Database": "system"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.read() == b"system\n"
