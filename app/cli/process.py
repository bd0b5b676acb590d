"""`backbone process`: one processor worker (a Faust worker) in the foreground."""

from __future__ import annotations

import typer

from app.cli import app
from app.cli.roles import needs


def _serve_metrics(settings, enforcement) -> None:  # noqa: ANN001 - Settings, processors.app.Enforcement
    """`/metrics` of this worker on BACKBONE_METRICS_PORT, if set: read from the enforcement at scrape time."""
    from prometheus_client import REGISTRY

    from backbone.telemetry import metrics
    from processors.app import APP_ID

    if settings.metrics_port:
        REGISTRY.register(metrics.ProcessorCollector(enforcement))
        REGISTRY.register(metrics.LagCollector(settings, [APP_ID]))
        metrics.serve(settings)


@app.command()
@needs("processor")
def process(
    loglevel: str = typer.Option(None, "--loglevel", "-l", help="crit, error, warn, info or debug (default BACKBONE_LOG_LEVEL)"),
    web_port: int = typer.Option(None, "--web-port", help="Serve Faust's web endpoint on this port (each worker its own)"),
) -> None:
    """Run a processor worker: enforce the agreements on every raw topic. Start more to scale out."""
    import faust

    from backbone.settings import get_settings
    from backbone.telemetry.logs import configure_logging, level_name
    from processors.app import Enforcement, create_app

    settings = get_settings()
    level = level_name(loglevel or settings.log_level)
    configure_logging(settings, level)  # until Faust sets up the same format at this level
    enforcement = Enforcement(settings)  # configuration errors end here, as one line, before Faust starts
    enforcement.freeze_heap = True  # this process is the worker: its start-up heap is never collected again
    processor = create_app(settings, web_port=web_port, enforcement=enforcement, log_level=level)
    _serve_metrics(settings, enforcement)
    worker = faust.Worker(processor, loglevel=level)
    worker.execute_from_commandline()
