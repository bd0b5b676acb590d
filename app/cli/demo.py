"""`backbone demo`: the whole flow on the embedded stack, live progress per stage, then a summary."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from app.cli import app, console, get_settings, load_settings
from backbone.errors import BackboneError

STAGES = {"stack": "embedded stack", "keys": "role keyrings", "processor": "processor worker", "sinks": "ClickHouse sinks",
          "produce": "produce events", "decide": "decided + audited", "statistics": "DP statistics release"}


@app.command()
def demo(
    events: int = typer.Option(20_000, "--events", "-n", min=100, help="Synthetic events to produce (all agencies)"),
    seed: int = typer.Option(42, "--seed", help="Seed of the synthetic population and events"),
    keep_running: bool = typer.Option(False, "--keep-running", help="Leave the stack up for exploration until Ctrl-C"),
    timeout: float = typer.Option(600.0, "--timeout", help="Give up waiting for the pipeline after this many seconds"),
    key_provider: str = typer.Option(None, "--key-provider", help="file (a keyring in the demo directory) or pkcs11 "
                                     "(keys made in the token BACKBONE_PKCS11_* names); default BACKBONE_KEY_PROVIDER"),
    quality_gating: bool = typer.Option(False, "--quality-gating", help="Also report fraud precision and recall with the "
                                        "quality gate on and off under planted defects (app/quality_gating.py; ~10 s more)"),
) -> None:
    """Run the whole backbone on this machine: produce, enforce, pseudonymise, land, detect fraud, report."""
    from app.demo import Demo
    from backbone.stack.embedded import broker_engine
    from backbone.stack.memory import broker_says

    chosen = get_settings()
    console.print(broker_says(broker_engine(chosen.embedded_broker), retention_hours=chosen.embedded_broker_retention_hours),
                  highlight=False)
    started = time.monotonic()
    columns = (TextColumn("{task.description:<20}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[note]}"), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        tasks: dict[str, Any] = {}

        def report(stage: str, completed: int | None = None, total: int | None = None, note: str = "") -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(STAGES.get(stage, stage), total=total or 1, note=note)
            task = tasks[stage]
            if completed is None:
                progress.update(task, completed=1, total=1, note=note)
                for other, other_task in tasks.items():  # earlier one-shot stages are done
                    if other != stage and progress.tasks[other_task].total == 1:
                        progress.update(other_task, completed=1)
            else:
                progress.update(task, completed=completed, total=total, note=note)

        base = get_settings() if key_provider is None else load_settings(key_provider=key_provider)
        runner = Demo(base, events, seed, keep_running, report)
        try:
            runner.start()
            report("in-flight", note="consent withdrawal and agreement suspension")
            runner.show_consent_withdrawal()
            runner.show_suspension()
            runner.produce()
            from backbone.events.catalog import CONSENT_EVENT

            raw = sum(n for event_type, n in runner.result.produced.items() if event_type != CONSENT_EVENT)
            expected = raw + runner.in_flight_events
            decided = runner.wait_until_decided(expected, timeout)
            runner.settle()
            report("statistics", note="a differentially private release: claims per region and month")
            runner.release_statistics()
            runner.settle(10.0)  # its ledger record lands in the audit database too
            result = runner.collect()
            _summary(result, decided, expected, time.monotonic() - started)
            if not keep_running:
                _scorecards(runner.quality_scorecards())
            if quality_gating:
                _gating(runner, seed)
            if decided < expected:
                raise BackboneError(
                    f"only {decided:,} of {expected:,} events were decided within {timeout:g} s; "
                    f"see the processor log in {runner.data_dir / 'logs'}"
                )
            if keep_running:
                _keep_running(runner)
        finally:
            runner.stop()
    console.print("[green]demo finished; every process it started has stopped[/green]")


def _scorecards(rows: list[tuple[Any, ...]]) -> None:
    """Each provider's data-quality scorecard (issue 32), as the quality sink landed it."""
    table = Table("provider", "event type", "hour (UTC)", "dimension", "score", "failed / checked", "bar",
                  title="Data quality per provider (the worker's open hour, handed over as it stopped)",
                  caption="timeliness: the share sent within the contract's delay of when it occurred; the demo's events "
                          "are dated over the months before this one (a year of history sent at once), so they are late by "
                          "design; `backbone produce --defects` stamps events as sent")
    for provider, event_type, hour, dimension, score, checked, failed, bar in rows:
        table.add_row(provider, event_type, f"{hour:%Y-%m-%d %H}:00", dimension, "-" if score is None else f"{score:.2f}",
                      f"{failed:,} / {checked:,}", bar)
    console.print(table if rows else "no quality scorecard landed (is BACKBONE_QUALITY_RULES off?)")


def _gating(runner: Any, seed: int) -> None:
    """Fraud precision and recall with the quality gate off and on, the same defective stream routed
    twice beside the demo (its own databases, dropped after)."""
    from app.quality_gating import BARS, BURST, run

    bars = ", ".join(f"{dimension} {bar}" for dimension, bar in BARS.items())
    table = Table("quality gate", "precision", "recall", "alerts", "records held", title="Fraud alerts vs ground truth under "
                  f"planted defects (a burst of {BURST.invalid:.0%} invalid incomes in one hour), the gate off and on ({bars}, hold)")
    for gated in (False, True):
        found = run(runner.client, runner.settings, runner.charter, gated, seed=seed)
        table.add_row("on" if gated else "off", f"{found.precision:.3f}", f"{found.recall:.3f}", f"{found.alerts:,}", f"{found.held:,}")
    console.print(table)


def retention_lines(drops: list[Any]) -> list[str]:
    """One line per table whose rows the agreement's retention dropped as they landed."""
    return [f"{drop.database}.{drop.table}: {drop.permitted - drop.landed:,} of {drop.permitted:,} permitted rows dropped by the "
            f"{drop.retention_days}-day retention (counted from the event's time: the events are older)" for drop in drops]


def _statistics(release: Any) -> None:
    """The DP release: the ten regions with most claims, the accuracy and what is left of the budget."""
    if release is None:
        return
    table = Table("region (postcode)", "claims (noisy)", "95% interval", title=f"Claims per region, {release.window}: differentially "
                  f"private release to {release.recipient} (epsilon {release.cost.get('epsilon', 0):g})")
    for cell, value, low, high in sorted(zip(release.cells, release.values, release.low, release.high, strict=True),
                                         key=lambda row: -row[1])[:10]:
        table.add_row(f"{cell[0]}xx", f"{round(value) + 0:,}", f"[{round(low) + 0:,}, {round(high) + 0:,}]")
    console.print(table)
    left = ", ".join(f"{k} {v:g}" for k, v in release.remaining.items())
    console.print(f"  {len(release.cells)} regions released, each +/- {release.accuracy:.1f} at 95%; the spend is sealed in the audit "
                  f"trail (operations checkpoint {release.ledger_checkpoint}); left of statistics' budget for {release.window}: {left} "
                  "(`backbone dp budget`)", highlight=False)


def _summary(result: Any, decided: int, expected: int, elapsed: float) -> None:
    produced = Table("event type", "produced", title="Events per agency")
    for event_type, count in sorted(result.produced.items()):
        produced.add_row(event_type, f"{count:,}")
    console.print(produced)

    decisions = Table("recipient", "decision", "count", title=f"Decisions ({decided:,} of {expected:,} events decided)")
    for recipient, decision, count in result.decisions:
        decisions.add_row(recipient, decision, f"{count:,}")
    console.print(decisions)

    rows = Table("database", "table or view", "rows", title="Rows per agency database")
    for database, table, count in result.rows:
        rows.add_row(database, table, f"{count:,}")
    console.print(rows)
    for line in retention_lines(result.retention_drops):
        console.print(line, highlight=False, markup=False)

    dlq = Table("stage: reason", "entries", title="Dead-letter queues")
    for reason, count in sorted(result.dlq.items()) or [("(none)", 0)]:
        dlq.add_row(reason, f"{count:,}")
    console.print(dlq)

    fraud = Table("kind", "alerts", "true pos.", "false pos.", "missed", "precision", "recall", title="Fraud alerts vs ground truth")
    for s in result.scores:
        fraud.add_row(s.kind, f"{result.alerts.get(s.kind, 0):,}", str(s.true_positives), str(s.false_positives),
                      str(s.false_negatives), f"{s.precision:.2f}", f"{s.recall:.2f}")
    console.print(fraud)

    keys = Table("part", "role", "keyring it opens", title="Keys: each role its own keyring, under its own master key")
    for part, role, path in result.keyrings:
        keys.add_row(part, role, str(path) if path else "none (no key)")
    console.print(keys)

    audit = result.audit
    if audit is not None and audit.ok:
        console.print(f"[bold]audit trail verified: {audit.checkpoints:,} checkpoints, {audit.decisions:,} decisions, "
                      f"{audit.operations:,} operator actions[/bold]", highlight=False)
    elif audit is not None:
        console.print(f"[red]audit trail NOT verified[/red] ({len(audit.failures)} failures), first: {audit.failures[0]}", highlight=False)

    _statistics(result.statistics)
    shown = result.in_flight
    console.print("[bold]In flight[/bold]")
    console.print(f"  consent granted, research claim:   {shown.consent_before}")
    console.print(f"  consent withdrawn, next claim:     {shown.consent_after} "
                  f"(honoured {shown.consent_seconds:.1f} s after the withdrawal was published)")
    console.print(f"  tax-to-fraud suspended, income:    {shown.suspended_decision}")
    console.print(f"  tax-to-fraud reactivated, income:  {shown.reactivated_decision}")
    if result.catalog:
        console.print("[bold]Lineage and catalogue[/bold] (generated from the enforced agreements; `backbone catalog` writes them anew)")
        for kind, paths in result.catalog.items():
            console.print(f"  {kind + ':':13} {len(paths):3} files in {paths[0].parent}", highlight=False, markup=False, soft_wrap=True)
        console.print(f"  {'run events:':13} {result.lineage_events} (OpenLineage, from the processor)", highlight=False, markup=False,
                      soft_wrap=True)
    console.print(f"\nDone in {elapsed:.0f} s. The data stays in ClickHouse at [bold]{result.clickhouse_dsn}[/bold]; "
                  f"ground truth in {result.truth_path}.", highlight=False)
    console.print("Query it (while a sink or `demo --keep-running` holds the directory, reading commands go through its read-only endpoint):",
                  highlight=False)
    console.print(f"  BACKBONE_CLICKHOUSE_DSN={result.clickhouse_dsn} backbone clickhouse query \\\n"
                  "    \"SELECT kind, count() FROM fraud.alerts FINAL GROUP BY kind\"", highlight=False)
    console.print(f"  BACKBONE_CLICKHOUSE_DSN={result.clickhouse_dsn} backbone clickhouse query \\\n"
                  "    \"SELECT recipient, reason, count() FROM audit.decisions GROUP BY ALL ORDER BY ALL\"", highlight=False)


def _keep_running(runner: Any) -> None:
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    console.print("\n[bold]The stack stays up[/bold] (Ctrl-C stops it). From another terminal:")
    for name, value in runner.environment().items():
        if name.startswith("BACKBONE_") and name != "BACKBONE_CLICKHOUSE_DSN":
            console.print(f"  export {name}={value}", highlight=False)
    console.print("  backbone topics list; backbone schemas list; backbone produce --agency welfare --events 1000")
    console.print("The sinks keep landing into ClickHouse in this process until Ctrl-C.")
    served = _start_console(runner)
    from app.portal.demo import start_portal

    portal = start_portal(runner, runner.result.in_flight.subject,
                          lambda line: console.print(line, highlight=False, markup=False, soft_wrap=True))  # the link unbroken
    for part, url in runner.metrics_urls.items():
        console.print(f"  metrics of the {part}: {url}", highlight=False)
    try:
        while not stop.wait(1.0):
            runner._check_alive()  # noqa: SLF001 - the demo owns its parts
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        if portal is not None:
            portal()
        if served is not None:
            served()


def _start_console(runner: Any) -> Any:
    """The web console on its own thread and event loop, over the demo's stack; returns its stopper.
    Passwords not configured are made up for this run and printed."""
    import secrets

    from pydantic import SecretStr

    from app.console.server import SHUTDOWN_TIMEOUT_S, start
    from app.serving import serve_on_thread
    from backbone.stack.embedded import port_in_use

    base, settings = runner.base, runner.settings
    passwords = {role: getattr(base, f"console_{role}_password") or SecretStr(secrets.token_urlsafe(12)) for role in ("operator", "oversight")}
    settings = settings.model_copy(update={f"console_{role}_password": secret for role, secret in passwords.items()}
                                   | {"console_port": 0 if port_in_use(base.console_port) else base.console_port,
                                      "console_host": base.console_host})
    try:
        served = serve_on_thread("console", lambda: start(settings, oversight=getattr(runner, "oversight_settings", None)))
    except Exception as exc:  # noqa: BLE001 - the demo goes on without its console, saying why
        console.print(f"[yellow]console not started:[/yellow] {exc}", highlight=False)
        return None
    console.print(f"  console: {served.url}", highlight=False)
    for role, secret in passwords.items():
        shown = "as configured" if getattr(base, f"console_{role}_password") else secret.get_secret_value()
        console.print(f"    user {role}, password {shown}", highlight=False)

    def stop() -> None:
        if not served.stop(SHUTDOWN_TIMEOUT_S + 10):
            console.print("[yellow]the console did not stop in time; leaving it to the process exit[/yellow]")

    return stop
