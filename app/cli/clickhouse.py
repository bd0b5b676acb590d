"""`backbone clickhouse grants [--apply]`: roles and grants of the per-agency databases."""

from __future__ import annotations

import typer

from app.cli import app, console
from backbone.errors import BackboneError
from backbone.settings import get_settings

clickhouse_app = typer.Typer(help="ClickHouse databases of the agencies.", no_args_is_help=True)
app.add_typer(clickhouse_app, name="clickhouse")


@clickhouse_app.command("grants")
def grants(apply: bool = typer.Option(False, "--apply", help="Run the statements on the ClickHouse server (not possible on chDB)")) -> None:
    """Print (or apply) one role per agency with SELECT on its own database only, and the oversight role."""
    from backbone.catalog import load_catalog
    from backbone.clickhouse import chdb_path, make_client
    from backbone.policy.agreements import load_agreements
    from consumers.ddl import grants_sql

    settings = get_settings()
    charter = load_agreements(settings.agreements_dir, load_catalog(settings.schemas_dir))
    statements = grants_sql(settings.clickhouse_database_prefix, {a.recipient for a in charter.agreements})
    if not apply:
        for statement in statements:
            console.print(statement + ";", highlight=False, soft_wrap=True)
        return
    if chdb_path(settings.clickhouse_dsn) is not None:
        raise BackboneError("chDB has no users or roles; print the SQL without --apply, or set BACKBONE_CLICKHOUSE_DSN to a ClickHouse server")
    client = make_client(settings.clickhouse_dsn)
    try:
        for statement in statements:
            client.command(statement)
    finally:
        client.close()
    console.print(f"applied {len(statements)} statements")
