"""`backbone produce`: synthetic agency events through the producer SDK, with planted fraud."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from app.cli import app, console, get_settings
from backbone.errors import BackboneError

if TYPE_CHECKING:
    from producers import AgencyProducer
    from producers.sdk import ProducerStats
    from producers.synthetic import SyntheticStream

# Spelled out so that `produce --help` imports no producer code (tests/test_cli_startup.py keeps it
# equal to producers.synthetic.AGENCIES).
AGENCY_NAMES = ("tax", "welfare", "registry", "police", "consent")
PROGRESS_EVERY = 1_000
MAX_PACING_SLEEP_S = 0.5


class _Pacer:
    """Sleeps so that no more than `rate` events a second go out (checked in small batches)."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.started = time.monotonic()
        self.batch = max(1, int(rate / 50)) if rate else 0

    def after(self, count: int) -> None:
        if not self.rate or count % self.batch:
            return
        ahead = self.started + count / self.rate - time.monotonic()
        while ahead > 0:
            time.sleep(min(ahead, MAX_PACING_SLEEP_S))
            ahead = self.started + count / self.rate - time.monotonic()


@app.command()
def produce(
    agency: str = typer.Option(None, "--agency", "-a", help=f"One agency: {', '.join(AGENCY_NAMES)}"),
    all_agencies: bool = typer.Option(False, "--all", help="Every agency, interleaved in time order"),
    events: int = typer.Option(100_000, "--events", "-n", min=1, help="How many events to send"),
    rate: float = typer.Option(None, "--rate", min=1, help="At most this many events a second"),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic data (same seed, same people and events)"),
    population: int = typer.Option(10_000, "--population", min=1, help="Synthetic people"),
    fraud_rate: float = typer.Option(0.01, "--fraud-rate", min=0.0, max=0.2, help="Share of people committing fraud"),
    start: str = typer.Option(None, "--start", help="First period, YYYY-MM (default: eleven months before this one)"),
    periods: int = typer.Option(None, "--periods", min=1, help="Stop after this many months"),
    truth: Path = typer.Option(None, "--truth", help="Write the planted fraud cases (JSON) here"),
    defects: bool = typer.Option(False, "--defects", help="Plant data-quality defects at known rates (3% missing postcodes, "
                                                          "1% invalid incomes, 0.5% duplicates, 2% late, 1% unknown postcodes, "
                                                          "0.5% double claims; "
                                                          "producers/synthetic/defects.py) and stamp the rest as sent now"),
) -> None:
    """Send synthetic agency events (with planted fraud) to `raw.<event_type>` through the producer SDK."""
    from backbone.events.catalog import load_catalog
    from producers.errors import DeliveryError
    from producers.sdk import AgencyProducer
    from producers.synthetic import AGENCIES, generate, write_ground_truth

    if all_agencies == (agency is not None):
        raise BackboneError("give either --agency NAME or --all")
    if agency is not None and agency not in AGENCIES:
        raise BackboneError(f"unknown agency {agency!r}; agencies: {', '.join(AGENCIES)}")
    try:
        stream = generate(seed, population, events, fraud_rate, start, periods, [agency] if agency else None)
    except ValueError as exc:
        raise BackboneError(str(exc)) from None
    settings = get_settings()
    catalog = load_catalog(settings.schemas_dir)
    producers: dict[str, AgencyProducer] = {}
    try:
        for name in sorted(stream.agencies):
            producers[name] = AgencyProducer(name, settings, catalog)
        sent = _send(_defective(stream) if defects else stream, producers, events, rate)
    except BaseException:
        for producer in producers.values():
            producer.close(raise_on_failure=False)
        raise
    with console.status("waiting for the last acknowledgements ..."):
        stats = {name: producer.close(raise_on_failure=False) for name, producer in producers.items()}
    _summary(stats, sent)
    if truth is not None:
        count = write_ground_truth(truth, stream.ground_truth)
        console.print(f"ground truth: {count} planted fraud cases in {truth}")
    failed = sum(s.failed for s in stats.values())
    if failed:
        total = sum(s.sent for s in stats.values())
        raise DeliveryError(f"{failed} of {total} events were not acknowledged by Kafka at {settings.kafka_bootstrap}", stats)


def _defective(stream: SyntheticStream) -> Iterator[tuple[str, dict]]:
    from datetime import UTC, datetime

    from producers.synthetic.defects import Defects, plant

    return plant(stream, Defects(), lambda: datetime.now(UTC))


def _send(stream: Iterable[tuple[str, dict]], producers: dict[str, AgencyProducer], events: int, rate: float | None) -> int:
    pacer = _Pacer(rate)
    sent = 0
    columns = (TextColumn("[bold]producing"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]:>9,.0f} events/s"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("produce", total=events, rate=0.0)
        started = time.monotonic()
        try:
            for event_type, record in stream:
                producers[record["provider"]].send(event_type, record)
                sent += 1
                pacer.after(sent)
                if sent % PROGRESS_EVERY == 0:
                    progress.update(task, completed=sent, rate=sent / max(time.monotonic() - started, 1e-9))
        except KeyboardInterrupt:
            console.print("[yellow]interrupted; flushing what was sent[/yellow]")
        progress.update(task, completed=sent, total=sent, rate=sent / max(time.monotonic() - started, 1e-9))
    return sent


def _summary(stats: dict[str, ProducerStats], sent: int) -> None:
    table = Table("agency", "sent", "delivered", "failed", "events/s")
    for name, s in stats.items():
        table.add_row(name, f"{s.sent:,}", f"{s.delivered:,}", f"{s.failed:,}", f"{s.rate:,.0f}")
    elapsed = max((s.elapsed_s for s in stats.values()), default=0.0)
    delivered = sum(s.delivered for s in stats.values())
    failed = sum(s.failed for s in stats.values())
    table.add_row("[bold]total", f"{sent:,}", f"{delivered:,}", f"{failed:,}",
                  f"{delivered / elapsed:,.0f}" if elapsed else "-")
    console.print(table)
    reasons: Counter[str] = Counter()
    for s in stats.values():
        reasons.update(s.errors)
    for reason, count in reasons.most_common():
        console.print(f"[red]{count:,} failed: {reason}[/red]")
