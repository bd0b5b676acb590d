"""`backbone agreements validate|list`."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.table import Table

from backbone.catalog import default_catalog
from app.cli import app, console, err_console
from backbone.errors import AgreementError
from backbone.policy.agreements import Charter, load_agreements
from backbone.settings import get_settings

agreements_app = typer.Typer(help="Data-sharing agreements (the charter).", no_args_is_help=True)
app.add_typer(agreements_app, name="agreements")


def _load(path: Path | None) -> Charter:
    return load_agreements(path or get_settings().agreements_dir, default_catalog())


@agreements_app.command("validate")
def validate(path: Path = typer.Argument(None, help="Agreements directory or one file (default BACKBONE_AGREEMENTS_DIR)")) -> None:
    """Check every agreement against the event schemas; list every problem (file, agreement, field)."""
    try:
        charter = _load(path)
    except AgreementError as exc:
        err_console.print(f"[red]{len(exc.problems)} problem(s):[/red]", highlight=False)
        for problem in exc.problems:
            err_console.print(f"  - {problem}", highlight=False, soft_wrap=True, markup=False)
        raise SystemExit(1) from None  # main() runs typer with standalone_mode=False: Exit would be swallowed
    where = path or get_settings().agreements_dir
    console.print(f"[green]ok[/green]: {len(charter.agreements)} agreement versions in {where} are valid", highlight=False)


@agreements_app.command("list")
def list_agreements(path: Path = typer.Argument(None, help="Agreements directory (default BACKBONE_AGREEMENTS_DIR)")) -> None:
    """Every agreement version: who shares what with whom, why, and whether it is in force."""
    charter = _load(path)
    now = datetime.now(UTC)
    table = Table("id", "version", "provider -> recipient", "event types", "purposes", "basis", "status", "valid until")
    for agreement in sorted(charter.agreements, key=lambda a: (a.id, a.version)):
        status = agreement.status
        if status == "active":
            status = "active (in force)" if agreement.valid_at(now) else "active (not in period)"
        table.add_row(
            agreement.id,
            str(agreement.version),
            f"{agreement.provider} -> {agreement.recipient}",
            "\n".join(agreement.event_types),
            "\n".join(agreement.purposes),
            agreement.lawful_basis + (" (identified)" if agreement.identified else ""),
            status,
            agreement.valid_until.date().isoformat() if agreement.valid_until else "-",
        )
    console.print(table)
