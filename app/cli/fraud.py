"""`backbone fraud alerts|score`: the fraud team's alerts and how they compare with ground truth."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from app.cli import app, console, get_settings
from app.cli.roles import needs
from backbone.errors import BackboneError

fraud_app = typer.Typer(help="Fraud detection on pseudonymised data.", no_args_is_help=True)
app.add_typer(fraud_app, name="fraud")


def _detector():  # noqa: ANN202 - (FraudDetector, Client)
    from backbone.clickhouse.client import make_client
    from consumers.fraud import FraudDetector

    settings = get_settings()
    client = make_client(settings.clickhouse_dsn, read_only=True)
    return FraudDetector(settings, client), client


def _unreadable(exc: Exception) -> BackboneError:
    from consumers.clickhouse_target import clickhouse_error

    # e.g. read while a sink holds the chDB directory, before it created the fraud database
    return BackboneError(f"fraud alerts cannot be read: ClickHouse refused ({clickhouse_error(exc)})")


@fraud_app.command("alerts")
def alerts(
    kind: str = typer.Option(None, "--kind", help="Only this kind (undeclared_income, shared_bank_account, claim_after_death)"),
    limit: int = typer.Option(100, "--limit", help="At most this many, oldest first"),
) -> None:
    """List fraud alerts raised so far (subjects are fraud-domain pseudonyms)."""
    from clickhouse_connect.driver.exceptions import DatabaseError

    detector, client = _detector()
    try:
        found = detector.alerts(kind, limit)
    except DatabaseError as exc:
        raise _unreadable(exc) from None
    finally:
        client.close()
    table = Table("detected (UTC)", "kind", "subject", "period", "details")
    for alert in found:
        table.add_row(alert.detected_at.strftime("%Y-%m-%d %H:%M:%S"), alert.kind, alert.subject, alert.period, alert.details)
    console.print(table)
    console.print(f"{len(found)} alerts")


@fraud_app.command("score")
@needs("processor")
def score_command(truth: Path = typer.Option(..., "--truth", help="Ground truth JSON written by the synthetic generator")) -> None:
    """Precision and recall of the alerts against the generator's ground truth."""
    from clickhouse_connect.driver.exceptions import DatabaseError

    from app.scoring import score
    from backbone.events.catalog import load_catalog
    from backbone.keys.keyring import Keyring
    from backbone.keys.pseudonym import token_function
    from backbone.policy.agreements import load_agreements
    from producers.synthetic.fraud import read_ground_truth

    settings = get_settings()
    if not truth.is_file():
        raise BackboneError(f"ground truth file {truth} does not exist; the synthetic producer writes it (see `backbone demo`)")
    charter = load_agreements(settings.agreements_dir, load_catalog(settings.schemas_dir))
    domains = {a.domain for a in charter.agreements if a.recipient == settings.fraud_recipient and a.domain}
    if len(domains) != 1:
        raise BackboneError(f"agreements with recipient {settings.fraud_recipient} name {len(domains)} sharing domains; expected one")
    pseudonymise, _ = token_function(Keyring.open(settings), domains.pop())
    detector, client = _detector()
    try:
        found = detector.alerts()
    except DatabaseError as exc:
        raise _unreadable(exc) from None
    finally:
        client.close()
    table = Table("kind", "found", "missed", "false", "precision", "recall")
    for result in score(found, read_ground_truth(truth), pseudonymise):
        table.add_row(result.kind, str(result.true_positives), str(result.false_negatives), str(result.false_positives),
                      f"{result.precision:.3f}", f"{result.recall:.3f}")
    console.print(table)


@fraud_app.command("migrate")
def migrate_command() -> None:
    """Lay the fraud database's tables out for the incremental rules (ordered by subject, with the
    rules' projections): tables made before are copied, swapped atomically, and caught up. Stop the
    fraud sinks first; run again after an interruption, it resumes."""
    from clickhouse_connect.driver.exceptions import DatabaseError

    from backbone.clickhouse.client import make_client
    from backbone.events.catalog import load_catalog
    from backbone.policy.agreements import load_agreements
    from consumers.clickhouse_target import clickhouse_error
    from consumers.fraud.layout import migrate
    from consumers.plans import recipient_plan

    settings = get_settings()
    charter = load_agreements(settings.agreements_dir, load_catalog(settings.schemas_dir))
    client = make_client(settings.clickhouse_dsn)
    try:
        migrated = migrate(client, recipient_plan(settings, charter, settings.fraud_recipient))
    except DatabaseError as exc:
        raise BackboneError(f"fraud tables not migrated: ClickHouse refused ({clickhouse_error(exc)}); "
                            "run again as a user who may create, insert into and drop tables in the fraud database") from None
    finally:
        client.close()
    console.print(f"migrated: {', '.join(migrated)}" if migrated else "fraud tables are laid out already; nothing to migrate")
