"""`backbone dlq list|show|replay`: dead letters by stage and reason, one entry's facts, and replay
after the cause is fixed. Never shows a dead letter's content: it is original bytes, possibly personal."""

from __future__ import annotations

from datetime import UTC, datetime

import typer
from rich.table import Table

from app.cli import app, console, get_settings
from app.cli.roles import needs
from backbone.errors import BackboneError

dlq_app = typer.Typer(help="Dead-letter queues: what was refused, why, and replay after a fix.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")


def _stages(stage: str | None) -> tuple[str, ...]:
    from backbone.kafka import dlq  # with confluent-kafka: only when a dlq command runs, not for --help

    if stage is None:
        return dlq.STAGES
    if stage not in dlq.STAGES:
        raise BackboneError(f"unknown stage {stage!r}; use one of {', '.join(dlq.STAGES)}")
    return (stage,)


def _millis(text: str | None, option: str) -> int | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BackboneError(f"{option} takes an ISO time such as 2026-12-02T10:00 (UTC unless it says otherwise), not {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _when(millis: int) -> str:
    return datetime.fromtimestamp(millis / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


@dlq_app.command("list")
def list_entries(
    stage: str = typer.Option(None, "--stage", help="processor or sink (default: both)"),
    entries: bool = typer.Option(False, "--entries", help="One row per entry instead of counts"),
    reason: str = typer.Option(None, "--reason", help="Only this reason code"),
) -> None:
    """Dead letters by stage, reason and source topic (or each entry with --entries)."""
    from backbone.kafka import dlq  # with confluent-kafka: only when a dlq command runs, not for --help

    settings = get_settings()
    found = [entry for each in _stages(stage) for entry in dlq.select(dlq.entries(settings, each), reason=reason)]
    if entries:
        table = Table("position", "stage", "reason", "source", "written (UTC)", "detail")
        for entry in found:
            letter = entry.letter
            table.add_row(entry.position, letter.stage, letter.reason,
                          f"{letter.source_topic}[{letter.partition}]@{letter.offset}", _when(entry.timestamp_ms), letter.detail or "")
    else:
        groups: dict[tuple[str, str, str], list[dlq.Entry]] = {}
        for entry in found:
            groups.setdefault((entry.letter.stage, entry.letter.reason, entry.letter.source_topic), []).append(entry)
        table = Table("stage", "reason", "source topic", "entries", "first (UTC)", "last (UTC)")
        for (each, code, source), group in sorted(groups.items()):
            times = sorted(entry.timestamp_ms for entry in group)
            table.add_row(each, code, source, f"{len(group):,}", _when(times[0]), _when(times[-1]))
    console.print(table)
    console.print(f"{len(found):,} dead letters", highlight=False)


@dlq_app.command("show")
def show(position: str = typer.Argument(..., help="An entry's position as `dlq list --entries` prints it, e.g. dlq.sink[0]@12")) -> None:
    """One dead letter's facts: where it came from, why, its headers and sizes (never its content)."""
    from backbone.kafka import dlq  # with confluent-kafka: only when a dlq command runs, not for --help

    settings = get_settings()
    stage = position.split("[", 1)[0].removeprefix(dlq.dlq_topic(""))
    match = [entry for entry in dlq.entries(settings, _stages(stage)[0]) if entry.position == position]
    if not match:
        raise BackboneError(f"no dead letter at {position}; `backbone dlq list --entries` shows the positions")
    entry = match[0]
    letter = entry.letter
    table = Table("fact", "value", title=position)
    for name, value in [
        ("stage", letter.stage), ("reason", letter.reason), ("meaning", dlq.REASONS.get(letter.reason, "?")),
        ("detail", letter.detail or ""), ("source", f"{letter.source_topic}[{letter.partition}]@{letter.offset}"),
        ("written (UTC)", _when(entry.timestamp_ms)), ("key", f"{len(letter.key or b'')} bytes"),
        ("value", f"{len(letter.value or b'')} bytes" + (f", wire format schema id {int.from_bytes(letter.value[1:5], 'big')}"
                                                       if letter.value and len(letter.value) >= 5 and letter.value[0] == 0 else "")),
        ("original headers", ", ".join(f"{name} ({len(value or b'')} bytes)" for name, value in letter.original_headers) or "none"),
    ]:
        table.add_row(name, value)
    console.print(table)


@dlq_app.command("replay")
@needs("operator")
def replay(
    stage: str = typer.Option(..., "--stage", help="processor or sink"),
    why: str = typer.Option(..., "--why", help="What was fixed (required; recorded in the audit trail)"),
    reason: str = typer.Option(None, "--reason", help="Only entries with this reason code"),
    source: str = typer.Option(None, "--source", help="Only entries from this source topic"),
    since: str = typer.Option(None, "--since", help="Only entries written at or after this time (ISO, UTC)"),
    until: str = typer.Option(None, "--until", help="Only entries written before this time (ISO, UTC)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be replayed, replay nothing"),
) -> None:
    """Write the selected dead letters back to their source topics (original key, bytes and headers);
    consumers deduplicate on event ids, so replaying twice lands each event once."""
    from backbone.audit import operations
    from backbone.kafka import dlq

    settings = get_settings()
    (chosen_stage,) = _stages(stage)
    if reason is not None and reason not in dlq.REASONS:
        raise BackboneError(f"unknown reason code {reason!r}; one of {', '.join(dlq.REASONS)}")
    chosen = dlq.select(dlq.entries(settings, chosen_stage), reason, _millis(since, "--since"), _millis(until, "--until"), source)
    if dry_run or not chosen:
        console.print(f"{len(chosen):,} dead letters {'would be ' if dry_run else ''}replayed", highlight=False)
        return
    if not why.strip():
        raise BackboneError("--why must say what was fixed; it is recorded in the audit trail")
    target = f"dlq.{chosen_stage}" + "".join(f" {k}={v}" for k, v in (("reason", reason), ("source", source), ("since", since), ("until", until)) if v)
    dlq.expire(settings)  # keys past the retention go first: what they sealed is never replayed
    count = dlq.replay(settings, chosen)
    operations.record(settings, operations.OperatorAction(
        "dlq_replay", settings.identity or "unidentified", target, "done", why.strip(), {"entries": str(count)}))
    console.print(f"replayed {count:,} dead letters to {', '.join(sorted({e.letter.source_topic for e in chosen}))}", highlight=False)
