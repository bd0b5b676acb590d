"""`backbone agreements validate|list|diff`."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table
from rich.text import Text

from app.cli import app, console, err_console, get_settings
from backbone.errors import AgreementError, BackboneError

if TYPE_CHECKING:
    from backbone.control.replay import Replay
    from backbone.events.catalog import Catalog
    from backbone.policy.agreements import Agreement, Charter
    from backbone.policy.diff import Change

agreements_app = typer.Typer(help="Data-sharing agreements (the charter).", no_args_is_help=True)
app.add_typer(agreements_app, name="agreements")


def _load(path: Path | None) -> Charter:
    from backbone.events.catalog import default_catalog
    from backbone.policy.agreements import load_agreements

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


# `agreements diff` exit codes: CI reads them
NOTHING_WIDENS, WIDENS, INVALID = 0, 1, 2


def read_agreement(path: Path, catalog: Catalog) -> Agreement:
    """The one agreement in a YAML file, validated on its own (`AgreementError` if not)."""
    from backbone.policy.agreements import load_agreements

    if not path.is_file():
        raise AgreementError(f"{path}: no such agreement file")
    (agreement,) = load_agreements(path, catalog).agreements
    return agreement


def one_line(error: BaseException) -> str:
    """An error as one line: an `AgreementError`'s first problem and how many more there are."""
    problems = getattr(error, "problems", None) or [str(error)]
    more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
    return problems[0].splitlines()[0] + more


def _as_it_is(old: str, catalog: Catalog) -> Agreement:
    """OLD: a YAML file, or an agreement id whose version in force the configured charter holds."""
    from backbone.policy.agreements import NAME_PATTERN, load_agreements

    if Path(old).is_file():
        return read_agreement(Path(old), catalog)
    if Path(old).suffix in {".yaml", ".yml"} or not re.match(NAME_PATTERN, old):
        raise AgreementError(f"{old}: no such agreement file or agreement id")
    return load_agreements(get_settings().agreements_dir, catalog).current(old)


@agreements_app.command("diff")
def diff_command(
    old: str = typer.Argument(..., help="The agreement as it is: a YAML file, or an agreement id (its version in force in BACKBONE_AGREEMENTS_DIR)"),
    new: Path = typer.Argument(..., help="The agreement as proposed: a YAML file"),
    replay: int = typer.Option(0, "--replay", min=0, help="Decide the last N raw events of each affected event type under both texts"
                               " (reads raw.<event_type>, opens the keyring; publishes nothing) and judge condition changes by them"),
    output: str = typer.Option("table", "--format", help="table, or json (a stable document for CI)"),
) -> None:
    """What a change of an agreement widens, per recipient and event type, and why: run it before
    `agreements apply`. Exit 0 when nothing widens, 1 when something widens, 2 on invalid input."""
    from backbone.control.replay import replay_from_kafka
    from backbone.events.catalog import load_catalog
    from backbone.policy.diff import diff, judge, report, widens

    try:
        if output not in ("table", "json"):
            raise BackboneError(f"--format {output}: use table or json")
        settings = get_settings()
        catalog = load_catalog(settings.schemas_dir)
        before, after = _as_it_is(old, catalog), read_agreement(new, catalog)
        changes = diff(before, after, catalog)
        replayed = None
        if replay:
            replayed = replay_from_kafka(settings, before, after, catalog, replay, changes)
            changes = judge(changes, replayed.verdicts)
    except BackboneError as exc:
        err_console.print(f"[red]error:[/red] {one_line(exc)}", highlight=False, soft_wrap=True, markup=True)
        raise SystemExit(INVALID) from None
    if output == "json":
        typer.echo(json.dumps(report(before, after, changes, replayed), indent=2))
    else:
        _show(before, after, changes, replayed)
    raise SystemExit(WIDENS if widens(changes) else NOTHING_WIDENS)


def _show(before: Agreement, after: Agreement, changes: list[Change], replayed: Replay | None) -> None:
    from backbone.policy.diff import widens

    console.print(f"{before.key} -> {after.key}", highlight=False, markup=False)
    for (recipient, event_type), rows in groupby(changes, key=lambda c: (c.recipient, c.event_type)):
        table = Table("", "change", "field", "old", "new", "why", title=f"{recipient} · {event_type}", title_justify="left")
        for change in rows:  # cells as Text: conditions and band lists are data, never markup
            mark = Text("widening", style="red") if change.widening else Text("narrowing", style="green")
            table.add_row(mark, *(Text(cell or "") for cell in (change.kind, change.field, change.old, change.new, change.reason)))
        console.print(table)
    if replayed is not None:
        table = Table("recipient", "event type", "events", "released old -> new", "more", "fewer", "fields gained", "fields lost",
                      title=f"replay of the last {replayed.requested} events (consent {replayed.consent})", title_justify="left")
        for row in replayed.figures:
            table.add_row(row.recipient, row.event_type, str(row.events), f"{row.released_old} -> {row.released_new}",
                          str(row.newly_released), str(row.no_longer_released), ", ".join(row.fields_gained), ", ".join(row.fields_lost))
        console.print(table)
        if replayed.skipped:
            console.print(f"{replayed.skipped} records skipped (undecodable, or of another event type)", highlight=False)
    if not changes:
        console.print("no change: nothing widens", highlight=False)
    elif widens(changes):
        count = sum(change.widening for change in changes)
        console.print(f"[red]{count} change(s) widen disclosure[/red]: applying needs --approved-by NAME", highlight=False)
    else:
        console.print("[green]nothing widens[/green]", highlight=False)
