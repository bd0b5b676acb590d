"""`backbone console [--host H] [--port P]`: the web view of the configured stack, until Ctrl-C."""

from __future__ import annotations

import typer

from app.cli import app, console, get_settings


@app.command("console")
def console_command(
    host: str = typer.Option(None, "--host", help="Address to bind (default BACKBONE_CONSOLE_HOST, 127.0.0.1)"),
    port: int = typer.Option(None, "--port", help="Port (default BACKBONE_CONSOLE_PORT, 8090)"),
) -> None:
    """Serve the web console: flows between agencies, denials, lag, agreements, DLQ, audit (login required)."""
    from app.console.server import start
    from app.serving import serve_until_signalled

    settings = get_settings()
    serve_until_signalled(lambda: start(settings, host, port), lambda url: console.print(
        f"console on {url} (users: operator, oversight as configured); Ctrl-C stops", highlight=False))
