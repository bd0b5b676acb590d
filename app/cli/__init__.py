"""The `backbone` command: typer sub-apps grouped by noun, one module each.

User errors (`BackboneError`) print one red line and exit 1; `--debug` shows the traceback.
Logging is set up once, from `BACKBONE_LOG_LEVEL` and `BACKBONE_LOG_FORMAT`, before any command runs.
SIGTERM and SIGHUP stop a command as Ctrl-C does (what it started is stopped on the way out), unless
the command handles them itself.
"""

from __future__ import annotations

import signal
import sys

import typer
from rich.console import Console

from backbone import __version__
from backbone.errors import BackboneError
from backbone.files.private import private_umask
from backbone.settings import load_settings
from backbone.telemetry.logs import configure_logging

app = typer.Typer(help="Data Sharing Backbone: agreement-enforced real-time data sharing.", no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)


@app.callback()
def root() -> None:
    """Data Sharing Backbone: agreement-enforced real-time data sharing between agencies."""


@app.command()
def version() -> None:
    """Print the backbone version."""
    console.print(f"backbone {__version__}")


def _register() -> None:
    # Each noun lives in its own module and adds itself to `app` on import.
    from app.cli import (  # noqa: F401  # noqa: F401 - ClickHouse sinks and their users  # noqa: F401
        acls,
        agreement_changes,
        agreements,
        audit,
        bench,
        clickhouse,
        consent,
        demo,
        dlq,
        erase,  # noqa: F401 - the right to erasure
        fraud,
        keys,
        process,
        produce,
        query,
        registry,
        schemas,
        sink,
        stack,
        status,
        topics,
        webconsole,  # noqa: F401 - `backbone console`, the web console (not `console`: that is the rich Console)
    )


def main() -> None:
    """Console-script entry point."""
    private_umask()  # before anything is written: data, keys, logs and the chDB directory are this user's only
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    _register()
    stopping = [signum for signum in (signal.SIGTERM, getattr(signal, "SIGHUP", None))
                if signum is not None and signal.getsignal(signum) is signal.SIG_DFL]  # nohup's SIG_IGN stays
    for signum in stopping:
        signal.signal(signum, signal.default_int_handler)
    try:
        _run(debug)
    finally:  # as they were, for callers in the same process (the tests)
        for signum in stopping:
            signal.signal(signum, signal.SIG_DFL)


def _run(debug: bool) -> None:
    try:
        configure_logging(load_settings())
        app(standalone_mode=False)
    except BackboneError as exc:
        if debug:
            raise
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise SystemExit(1) from None
    except typer.Abort:
        err_console.print("aborted")
        raise SystemExit(130) from None
    except SystemExit:
        raise
    except Exception as exc:  # usage errors (typer vendors click) arrive here in standalone_mode=False
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            raise SystemExit(exc.exit_code) from None
        raise
