"""`backbone sink [--recipient R ...] [--no-audit] [--until-idle]`: land shared topics in ClickHouse."""

from __future__ import annotations

import signal
import threading

import typer

from app.cli import app, console
from backbone.errors import BackboneError
from backbone.settings import get_settings


@app.command("sink")
def sink(
    recipient: list[str] = typer.Option(None, "--recipient", "-r", help="Agency whose shared topics to land (repeatable; default every recipient in the charter)"),
    audit: bool = typer.Option(True, "--audit/--no-audit", help="Also land audit.decisions into the audit database"),
    until_idle: bool = typer.Option(False, "--until-idle", help="Stop once no message arrived for --idle seconds"),
    idle: float = typer.Option(3.0, "--idle", help="Idle seconds for --until-idle"),
) -> None:
    """Land shared.<recipient>.* (and audit.decisions) into per-agency ClickHouse databases; Ctrl-C stops cleanly."""
    from backbone.catalog import load_catalog
    from backbone.clickhouse import make_client
    from backbone.policy.agreements import load_agreements
    from backbone.serde import registry_client
    from consumers.sink import sinks_for

    settings = get_settings()
    charter = load_agreements(settings.agreements_dir, load_catalog(settings.schemas_dir))
    client = make_client(settings.clickhouse_dsn)
    # each sink gets its own client (one ClickHouse handle each): they land in parallel
    sinks = sinks_for(settings, charter, lambda: make_client(settings.clickhouse_dsn), registry_client(settings), recipient or None, audit)
    if not sinks:
        raise BackboneError("no recipient to land: the charter names none; pass --recipient")
    for each in sinks:
        each.setup()
    names = ", ".join(each.plan.name for each in sinks)
    console.print(f"sinks {names} -> {settings.clickhouse_dsn}", highlight=False)
    stop = threading.Event()
    failures: list[BaseException] = []

    def land(each) -> None:  # noqa: ANN001 - a Sink
        try:
            if until_idle:
                each.run_until_idle(idle_s=idle)
                each.close()
            else:
                each.run(stop)
        except BaseException as exc:  # noqa: BLE001 - reported once all threads end
            failures.append(exc)
            stop.set()

    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threads = [threading.Thread(target=land, args=(each,), name=f"sink-{each.plan.name}", daemon=True) for each in sinks]
    for thread in threads:
        thread.start()
    try:
        while any(thread.is_alive() for thread in threads):
            for thread in threads:
                thread.join(timeout=0.25)
            for each in sinks:
                stats = each.stats
                if stats.batches != getattr(each, "_reported", 0):
                    each._reported = stats.batches  # noqa: SLF001 - progress bookkeeping
                    console.print(f"{each.plan.name}: landed {stats.landed}, dead-lettered {stats.dead_lettered}, batches {stats.batches}", highlight=False)
    except KeyboardInterrupt:
        stop.set()
        for thread in threads:
            thread.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
        client.close()
    if failures:
        raise failures[0]
