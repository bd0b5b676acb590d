"""`backbone audit subject NATIONAL_ID`: every disclosure about one person, for oversight."""

from __future__ import annotations

import typer
from rich.table import Table

from app.cli import app, console
from backbone.settings import get_settings

audit_app = typer.Typer(help="Oversight: who received what about whom, and why.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


def _charter(settings):  # noqa: ANN001, ANN202 - Settings -> Charter
    """The agreement versions as the processors know them: the files, and every version published
    on agreements.changes when Kafka answers (the files alone otherwise)."""
    from backbone import agreement_changes
    from backbone.catalog import load_catalog
    from backbone.errors import BackboneError
    from backbone.policy.agreements import Charter, load_agreements

    charter = load_agreements(settings.agreements_dir, load_catalog(settings.schemas_dir))
    try:
        versions, _ = agreement_changes.published(settings, charter, timeout=5.0)
    except BackboneError:
        return charter
    return Charter(charter.catalog, tuple(versions.values()), charter.sources)


@audit_app.command("subject")
def subject(national_id: str = typer.Argument(..., help="The person's national id (never stored: only its oversight pseudonym is looked up)")) -> None:
    """List every disclosure about one person: recipient, when, agreement, purposes, fields."""
    from backbone.clickhouse import make_client
    from backbone.keyring import Keyring
    from consumers.audit import disclosures, subject_token

    settings = get_settings()
    token_text = subject_token(Keyring.open(settings), national_id)
    client = make_client(settings.clickhouse_dsn)
    try:
        found = disclosures(client, settings.clickhouse_database_prefix, token_text, _charter(settings))
    finally:
        client.close()
    table = Table("when (UTC)", "recipient", "event", "agreement", "purposes", "fields", "recipient's event id",
                  title=f"disclosures about subject {token_text}")
    for item in found:
        table.add_row(item.decided_at.strftime("%Y-%m-%d %H:%M:%S"), item.recipient, item.event_type,
                      f"{item.agreement_id}@{item.agreement_version}", ", ".join(item.purposes), ", ".join(item.fields),
                      item.recipient_event_id)
    console.print(table)
    console.print(f"{len(found)} disclosures")
