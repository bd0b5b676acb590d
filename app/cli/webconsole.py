"""`backbone console [--host H] [--port P]`: the web view of the configured stack, until Ctrl-C."""

from __future__ import annotations

import asyncio
import signal

import typer

from app.cli import app, console, get_settings


@app.command("console")
def console_command(
    host: str = typer.Option(None, "--host", help="Address to bind (default BACKBONE_CONSOLE_HOST, 127.0.0.1)"),
    port: int = typer.Option(None, "--port", help="Port (default BACKBONE_CONSOLE_PORT, 8090)"),
) -> None:
    """Serve the web console: flows between agencies, denials, lag, agreements, DLQ, audit (login required)."""
    from app.console.server import start

    settings = get_settings()

    async def serve() -> None:
        runner, url = await start(settings, host, port)
        console.print(f"console on {url} (users: operator, oversight as configured); Ctrl-C stops", highlight=False)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(serve())
