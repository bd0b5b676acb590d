"""`backbone status [--watch]`: the operator's view of the configured stack."""

from __future__ import annotations

import time

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from app.cli import app, console, get_settings


def _render(status, minutes: int):  # noqa: ANN001, ANN202 - app.status.Status -> rich renderable
    parts = []
    if status.unreachable:
        lines = Table("part", "cannot be reached", title="[red]Unreachable[/red]")
        for part, why in status.unreachable.items():
            lines.add_row(part, why)
        parts.append(lines)
    topics = Table("topic", "partitions", "end offset", title="Topics")
    for topic in status.topics:
        topics.add_row(topic.name, str(topic.partitions), f"{topic.end_offset:,}")
    groups = Table("consumer group", "topics", "committed", "lag", title="Consumer groups (lag from watermarks: approximate)")
    for group in status.groups:
        groups.add_row(group.group, str(group.topics), f"{group.committed:,}", f"{group.lag:,}")
    subjects = Table("subject", title=f"Registry subjects ({len(status.subjects)})")
    for subject in status.subjects:
        subjects.add_row(subject)
    decisions = Table("recipient", "decision", "count", title=f"Decisions in the last {minutes} min")
    for recipient, decision, count in status.decisions:
        decisions.add_row(recipient, decision, f"{count:,}")
    dlq = Table("stage: reason", "entries", title="Dead-letter queues")
    for reason, count in sorted(status.dlq.items()):
        dlq.add_row(reason, f"{count:,}")
    changes = Table("agreement", "status", "since (UTC)", "by", title="Agreement status changes in force")
    for key, state, at, by in status.agreement_changes:
        changes.add_row(key, state, at, by)
    problems = Table("agreement", "why it is denied (agreement_inactive)", title="[red]Agreement changes that cannot be applied[/red]")
    for key, why in sorted(status.agreement_problems.items()):
        problems.add_row(key, why)
    rows = Table("database", "rows", title="Rows per agency database")
    for database, count in status.rows:
        rows.add_row(database, f"{count:,}")
    retention = Table("table", "counted from", "retention (days)", "oldest row (UTC)", "its age (days)", "",
                      title="Retention: oldest row per table")
    for kept in status.retention:
        age = kept.age_days
        retention.add_row(f"{kept.database}.{kept.table}", kept.clock, f"{kept.days:,}",
                          kept.oldest.strftime("%Y-%m-%d %H:%M:%S") if kept.oldest else "(empty)",
                          f"{age:,.1f}" if age is not None else "",
                          "[yellow]past retention: removed at the next merge[/yellow]" if kept.overdue else "")
    parts += [topics, groups, subjects, decisions, dlq, changes]
    if status.agreement_problems:
        parts.append(problems)
    parts += [rows, retention, Text(time.strftime("as of %H:%M:%S"), style="dim")]
    return Group(*parts)


@app.command()
def status(
    watch: bool = typer.Option(False, "--watch", "-w", help="Refresh until Ctrl-C"),
    interval: float = typer.Option(5.0, "--interval", help="Seconds between refreshes with --watch"),
    minutes: int = typer.Option(5, "--minutes", help="Window of the decision counts"),
    timeout: float = typer.Option(3.0, "--timeout", help="Seconds each part gets to answer"),
) -> None:
    """Topics, consumer lag, registry subjects, recent decisions, DLQ entries, rows per agency and
    the oldest row of each table against its retention."""
    from app.status import collect

    settings = get_settings()
    if not watch:
        console.print(_render(collect(settings, minutes, timeout), minutes))
        return
    with Live(console=console, auto_refresh=False) as live:
        try:
            while True:
                live.update(_render(collect(settings, minutes, timeout), minutes), refresh=True)
                time.sleep(interval)
        except KeyboardInterrupt:
            pass
