"""`backbone sink [--recipient R ...] [--no-audit | --audit-only] [--until-idle]`: land shared topics in ClickHouse."""

from __future__ import annotations

import signal

import typer

from app.cli import app, console, get_settings
from backbone.errors import BackboneError


@app.command("sink")
def sink(
    recipient: list[str] = typer.Option(None, "--recipient", "-r", help="Agency whose shared topics to land (repeatable; default every recipient in the charter)"),
    audit: bool = typer.Option(True, "--audit/--no-audit", help="Also land audit.decisions into the audit database"),
    audit_only: bool = typer.Option(False, "--audit-only", help="Land the audit topics only, no recipient's (the audit sink's own workload)"),
    quality: bool = typer.Option(True, "--quality/--no-quality", help="Also land quality.windows into the quality database, "
                                                                     "with each hour's scorecard"),
    until_idle: bool = typer.Option(False, "--until-idle", help="Stop once no message arrived for --idle seconds"),
    idle: float = typer.Option(3.0, "--idle", help="Idle seconds for --until-idle"),
) -> None:
    """Land shared.<recipient>.* (and audit.decisions) into per-agency ClickHouse databases; Ctrl-C stops cleanly."""
    from backbone.clickhouse.client import make_client, serve_readers
    from backbone.events.catalog import load_catalog
    from backbone.events.serde import registry_client
    from backbone.policy.agreements import load_agreements
    from consumers.batching import SinkThreads
    from consumers.sink import sinks_for

    if audit_only and (recipient or not audit):
        raise BackboneError("--audit-only lands the audit topics alone: drop --recipient and --no-audit")
    settings = get_settings()
    charter = load_agreements(settings.agreements_dir, load_catalog(settings.schemas_dir))
    # each sink gets its own client (one ClickHouse handle each): they land in parallel
    sinks = sinks_for(settings, charter, lambda: make_client(settings.clickhouse_dsn), registry_client(settings),
                      [] if audit_only else recipient or None, audit)
    if quality and audit:  # the quality windows go with the audit trail: the backbone's own, no recipient's
        from backbone.quality.contract import load_quality
        from consumers.quality import quality_sink

        sinks.append(quality_sink(settings, make_client(settings.clickhouse_dsn), load_quality(settings.schemas_dir, charter.catalog)))
    if not sinks:
        raise BackboneError("no recipient to land: the charter names none; pass --recipient")
    if settings.metrics_port:
        from prometheus_client import REGISTRY

        from backbone.telemetry import metrics

        metrics.SinkCollector(sinks)
        for each in sinks:
            if each.name == "quality":
                REGISTRY.register(metrics.QualityScorecardCollector(each.target))
        REGISTRY.register(metrics.LagCollector(settings, {each.group_id for each in sinks}))
        metrics.serve(settings)
    # with chDB this process now holds the directory: reading commands and the console elsewhere read it through here
    served = serve_readers(settings.clickhouse_dsn or "")
    runner = SinkThreads(sinks, idle_s=idle if until_idle else None)
    runner.start()
    console.print(f"sinks {', '.join(each.name for each in sinks)} -> {settings.clickhouse_dsn}", highlight=False)
    reported = {each.name: 0 for each in sinks}
    previous = signal.signal(signal.SIGTERM, lambda *_: runner.stop(timeout=0))
    try:
        while runner.alive():
            runner.join(timeout=0.25)
            for each in sinks:
                stats = each.stats
                if stats.batches != reported[each.name]:
                    reported[each.name] = stats.batches
                    console.print(f"{each.name}: landed {stats.landed}, dead-lettered {stats.dead_lettered}, batches {stats.batches}", highlight=False)
    except KeyboardInterrupt:
        runner.stop()
    finally:
        signal.signal(signal.SIGTERM, previous)
        if served is not None:
            served.close()
    runner.check()
