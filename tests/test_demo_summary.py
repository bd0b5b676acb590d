"""The demo's summary says why a recipient's table holds fewer rows than were permitted to it."""

from __future__ import annotations

from pathlib import Path

import clickhouse_connect

from app.cli.demo import retention_lines
from app.demo import RetentionDrop, retention_drops
from consumers import ddl
from consumers.typemap import Column

COLUMNS = [Column("event_id", "String"), Column("occurred_at", "DateTime64(3, 'UTC')")]


def stored_sql(tmp_path: Path, retention_days: int | None) -> str:
    """The CREATE TABLE of a recipient's table as ClickHouse (chDB) stores it in system.tables."""
    client = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path}/clickhouse")
    client.command("CREATE DATABASE IF NOT EXISTS welfare")
    client.command(ddl.create_table_sql("welfare", "registry_address_changed", COLUMNS, ("event_id",), retention_days))
    return client.query("SELECT create_table_query FROM system.tables WHERE database = 'welfare'").result_rows[0][0]


def test_a_table_holding_fewer_rows_than_permitted_under_a_retention_is_reported(tmp_path: Path) -> None:
    sql = {("welfare", "registry_address_changed"): stored_sql(tmp_path, 365)}
    drops = retention_drops({("welfare", "registry_address_changed"): 158}, [("welfare", "registry_address_changed", 1)], sql)
    assert drops == [RetentionDrop("welfare", "registry_address_changed", 158, 1, 365)]
    (line,) = retention_lines(drops)
    assert "welfare.registry_address_changed: 157 of 158 permitted rows dropped by the 365-day retention" in line


def test_nothing_is_reported_when_every_permitted_row_landed_or_the_table_keeps_rows_forever(tmp_path: Path) -> None:
    table = ("welfare", "registry_address_changed")
    assert retention_drops({table: 158}, [(*table, 158)], {table: stored_sql(tmp_path, 365)}) == []
    assert retention_drops({table: 158}, [(*table, 1)], {table: "CREATE TABLE welfare.registry_address_changed (x String) ENGINE = MergeTree ORDER BY x"}) == []
