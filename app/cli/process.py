"""`backbone process`: one processor worker (a Faust worker) in the foreground."""

from __future__ import annotations

import typer

from app.cli import app


@app.command()
def process(
    loglevel: str = typer.Option("info", "--loglevel", "-l", help="crit, error, warn, info or debug"),
    web_port: int = typer.Option(None, "--web-port", help="Serve Faust's web endpoint on this port (each worker its own)"),
) -> None:
    """Run a processor worker: enforce the agreements on every raw topic. Start more to scale out."""
    import faust

    from backbone.settings import get_settings
    from processors.app import Enforcement, create_app

    settings = get_settings()
    enforcement = Enforcement(settings)  # configuration errors end here, as one line, before Faust starts
    worker = faust.Worker(create_app(settings, web_port=web_port, enforcement=enforcement), loglevel=loglevel)
    worker.execute_from_commandline()
