"""`backbone clickhouse query SQL`: run one query on the configured ClickHouse and print the rows."""

from __future__ import annotations

import typer
from rich.table import Table

from app.cli import console, get_settings
from app.cli.clickhouse import clickhouse_app
from backbone.errors import BackboneError


@clickhouse_app.command("query")
def query(sql: str = typer.Argument(..., help="One SQL statement, e.g. \"SELECT count() FROM fraud.alerts FINAL\""),
          limit: int = typer.Option(100, "--limit", help="Print at most this many rows")) -> None:
    """Run one query against BACKBONE_CLICKHOUSE_DSN (chDB or a server) and print the result."""
    from clickhouse_connect.driver.exceptions import DatabaseError

    from backbone.clickhouse.client import make_client

    client = make_client(get_settings().clickhouse_dsn, read_only=True)
    try:
        result = client.query(sql)
    except DatabaseError as exc:
        raise BackboneError(f"ClickHouse refused the query: {str(exc).splitlines()[0][:300]}") from None
    finally:
        client.close()
    table = Table(*result.column_names)
    for row in result.result_rows[:limit]:
        table.add_row(*(str(value) for value in row))
    console.print(table)
    if len(result.result_rows) > limit:
        console.print(f"({len(result.result_rows) - limit} more rows; --limit to see them)")
