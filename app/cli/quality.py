"""`backbone quality pending`: the quality windows whose records wait in `quality.pending` for their
verdict, and those a worker left held by stopping before it judged them. Keys and headers only: the
records themselves are raw events and are never shown."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import typer
from rich.table import Table

from app.cli import app, console, get_settings
from app.cli.roles import needs

quality_app = typer.Typer(help="Quality gating: records waiting for their window's verdict, and windows a stopped worker left held.",
                          no_args_is_help=True)
app.add_typer(quality_app, name="quality")


@quality_app.command("pending")
@needs("operator")
def pending(as_json: bool = typer.Option(False, "--json", help="One JSON object per window instead of a table")) -> None:
    """Each worker's quality window with records in quality.pending: open (released or held when it
    ends), judged (what its records became), held because its worker stopped before judging it, or
    partly released when it stopped while releasing it (the rest held)
    (fail closed: those records are never delivered; they leave with the topic's retention)."""
    from backbone.access.acls import READER_GROUP_PREFIX
    from backbone.quality.gating import list_pending
    from processors.quality_release import listing

    settings = get_settings()
    now = datetime.now(UTC)
    rows = [w.row(now) for w in list_pending(listing(settings, f"{READER_GROUP_PREFIX}{uuid.uuid4().hex}"))]
    if as_json:
        for row in rows:
            console.print(json.dumps(row, sort_keys=True), markup=False, highlight=False, soft_wrap=True)
        return
    table = Table("window (UTC)", "minutes", "event type", "worker", "records", "recipients", "state")
    for row in rows:
        table.add_row(row["start"], str(row["minutes"]), row["event_type"], row["worker"], str(row["records"]), ", ".join(row["recipients"]), row["state"])
    console.print(table)
    held = sum(row["held"] for row in rows)  # a window left mid-release: only what was not released
    console.print(f"{len(rows)} window(s); {held} record(s) held by workers that stopped mid-window", highlight=False)
