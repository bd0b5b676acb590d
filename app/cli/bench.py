"""`backbone bench`: the end-to-end benchmark (`python -m bench.e2e`) on a private embedded stack."""

from __future__ import annotations

import typer

from app.cli import app


@app.command()
def bench(
    events: int = typer.Option(30_000, "--events", "-n", min=100, help="Events of the throughput phase (demo mix)"),
    rate: float = typer.Option(3_000.0, "--rate", min=1, help="Offered load of the latency phase, events/s (the issue-16 goal is measured at 3,000)"),
    duration: float = typer.Option(15.0, "--duration", min=1, help="Length of the latency phase, seconds"),
    seed: int = typer.Option(7, "--seed", help="Seed of the synthetic events"),
) -> None:
    """Benchmark produce -> processor -> sinks -> ClickHouse beside a bare consume -> transform -> produce loop."""
    from bench.e2e import main

    main(["--events", str(events), "--rate", str(rate), "--duration", str(duration), "--seed", str(seed)])
