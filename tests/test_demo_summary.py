"""The demo's summary says why a recipient's table holds fewer rows than were permitted to it."""

from __future__ import annotations

import uuid

from app.cli.demo import retention_lines
from app.retention import RetentionDrop, retention_drops
from consumers import ddl
from consumers.typemap import Column

COLUMNS = [Column("event_id", "String"), Column("occurred_at", "DateTime64(3, 'UTC')")]


def stored_sql(client, retention_days: int | None) -> str:  # noqa: ANN001 - the session's chDB client
    """The CREATE TABLE of a recipient's table as ClickHouse (chDB) stores it in system.tables, in a
    database of its own in the session's chDB (chDB opens one directory per process)."""
    database = f"welfare_{uuid.uuid4().hex[:8]}"
    client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    client.command(ddl.create_table_sql(database, "registry_address_changed", COLUMNS, ("event_id",), retention_days))
    return client.query("SELECT create_table_query FROM system.tables WHERE database = {d:String}",
                        parameters={"d": database}).result_rows[0][0]


def test_a_table_holding_fewer_rows_than_permitted_under_a_retention_is_reported(clickhouse_client) -> None:  # noqa: ANN001
    sql = {("welfare", "registry_address_changed"): stored_sql(clickhouse_client, 365)}
    drops = retention_drops({("welfare", "registry_address_changed"): 158}, [("welfare", "registry_address_changed", 1)], sql)
    assert drops == [RetentionDrop("welfare", "registry_address_changed", 158, 1, 365)]
    (line,) = retention_lines(drops)
    assert "welfare.registry_address_changed: 157 of 158 permitted rows dropped by the 365-day retention" in line


def test_nothing_is_reported_when_every_permitted_row_landed_or_the_table_keeps_rows_forever(clickhouse_client) -> None:  # noqa: ANN001
    table = ("welfare", "registry_address_changed")
    assert retention_drops({table: 158}, [(*table, 158)], {table: stored_sql(clickhouse_client, 365)}) == []
    assert retention_drops({table: 158}, [(*table, 1)], {table: "CREATE TABLE welfare.registry_address_changed (x String) ENGINE = MergeTree ORDER BY x"}) == []
