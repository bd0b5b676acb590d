"""`backbone dp release|budget`: differentially private releases and what is left of each budget."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from app.cli import app, console, get_settings
from app.cli.roles import needs

dp_app = typer.Typer(help="Differentially private releases: aggregates with noise, within budgets sealed in the audit trail.",
                     no_args_is_help=True)
app.add_typer(dp_app, name="dp")


def _amounts(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.6g}" for k, v in values.items())


@dp_app.command("release")
@needs("operator")
def release(agreement: str = typer.Argument(..., help="The agreement declaring the dp_release, e.g. welfare-to-fraud"),
            query: str = typer.Option(None, "--query", help="Which declared query (default: the first)"),
            recipient: str = typer.Option(None, "--recipient", help="Whose budget (default: the only one)"),
            purpose: str = typer.Option(None, "--purpose", help="For which purpose (default: the recipient's only one)"),
            window: str = typer.Option(None, "--window", help="The window released, a value of the windows column (e.g. 2026-03)"),
            output: str = typer.Option("text", "--format", help="text or json")) -> None:
    """Release one declared query: its spend is sealed in the audit trail first (refused, and the
    refusal sealed, past a budget or the population cap), then each person's contribution is
    bounded, OpenDP adds the noise, and the cells with their 95% intervals go to the recipient's
    database (dp_releases) and to dp.<recipient>.releases. Needs BACKBONE_IDENTITY."""
    from app.dp_release import run_release
    from backbone.audit.operations import actor
    from backbone.clickhouse.client import make_client
    from backbone.policy.agreements import default_charter

    settings = get_settings()
    actor(settings)  # before anything: the spend is recorded under this identity
    client = make_client(settings.clickhouse_dsn)
    try:
        result = run_release(settings, client, default_charter(), agreement, query_name=query, recipient=recipient,
                             purpose=purpose, window=window)
    finally:
        client.close()
    if output == "json":
        console.print_json(json.dumps(result.to_json()))
        return
    table = Table(*result.columns, "value", "95% interval", title=f"{result.query} ({result.statistic}) of {result.agreement}, "
                  f"window {result.window}, for {result.recipient}")
    for cell, value, low, high in zip(result.cells, result.values, result.low, result.high, strict=True):
        interval = f"[{low:,.1f}, {high:,.1f}]" if low is not None and high is not None else "-"
        table.add_row(*cell, f"{value:,.1f}", interval)
    console.print(table)
    accuracy = f"+/- {result.accuracy:,.1f} per cell at 95%" if result.accuracy is not None else "per cell as shown"
    console.print(f"release {result.release_id}: {accuracy}; spent {_amounts(result.cost)} (ledger: operations checkpoint "
                  f"{result.ledger_checkpoint}); left in {result.recipient}'s budget for {result.purpose} in window "
                  f"{result.window}: {_amounts(result.remaining)}", highlight=False)


@dp_app.command("budget")
def budget(output: str = typer.Option("text", "--format", help="text or json")) -> None:
    """What each declared budget and population cap has spent and has left, per window, recomputed
    from the ledger records sealed in the audit trail (audit.operations)."""
    from app.dp_release import budget_rows
    from backbone.events.serde import Decoder, registry_client
    from backbone.kafka.topics import OPERATIONS_TOPIC
    from backbone.policy.agreements import default_charter
    from backbone.privacy import ledger
    from consumers.audit_kafka import read_messages

    settings = get_settings()
    decode = Decoder(registry_client(settings))
    actions = {}
    for message in read_messages(settings, OPERATIONS_TOPIC, 0.5, settings.kafka_timeout_s * 6):
        record = decode(message.value() or b"").record
        if record.get("action") == ledger.ACTION:
            actions[int(record.get("checkpoint", 0))] = record
    tally, problems = ledger.recompute(actions)
    rows = budget_rows(default_charter(), tally)
    if output == "json":
        console.print_json(json.dumps({"budgets": rows, "problems": [p.detail for p in problems]}))
    else:
        table = Table("agreement", "window", "budget", "limit", "spent", "left")
        for row in rows:
            table.add_row(row["agreement"], row["window"], row["budget"], _amounts(row["limit"]), _amounts(row["spent"]),
                          _amounts(row["left"]))
        console.print(table)
        for problem in problems:
            console.print(f"[red]ledger problem[/red] operations checkpoint {problem.sequence}: {problem.detail}", highlight=False)
    if problems:
        raise SystemExit(1)
