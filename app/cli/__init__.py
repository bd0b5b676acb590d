"""The `backbone` command: typer sub-apps grouped by noun, one module each.

User errors (`BackboneError`) print one red line and exit 1; `--debug` shows the traceback.
Logging is set up once, from `BACKBONE_LOG_LEVEL` and `BACKBONE_LOG_FORMAT`, when a command runs
(`--help` needs none); `-v` before the command asks for INFO lines, libraries' included.
SIGTERM and SIGHUP stop a command as Ctrl-C does (what it started is stopped on the way out), unless
the command handles them itself.

A command's module is imported only when that command runs (or shows its help): `COMMANDS` names
each command's module and the line `backbone --help` shows for it, so the list needs no import.
"""

from __future__ import annotations

import importlib
import logging
import signal
import sys
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from backbone import __version__
from backbone.errors import BackboneError
from backbone.files.private import private_umask

if TYPE_CHECKING:
    from backbone.settings import Settings

# command -> (modules under app/cli that register it on `app` and its subcommands, its one-line help
# for `backbone --help`).
# tests/test_cli_startup.py checks this against the commands the modules register.
COMMANDS: dict[str, tuple[str, str]] = {
    "acls": ("acls", "Kafka ACLs: who may write, read and create which topics and groups."),
    "agreements": ("agreements agreement_changes", "Data-sharing agreements (the charter)."),
    "audit": ("audit", "Oversight: who received what about whom, and why; and proof the trail is intact."),
    "bench": ("bench", "Benchmark produce -> processor -> sinks -> ClickHouse beside a bare consume -> transform -> produce loop."),
    "clickhouse": ("clickhouse query", "ClickHouse databases of the agencies."),
    "catalog": ("catalog", "Lineage and catalogue from the enforced agreements: record of processing, AsyncAPI, DCAT-AP, OpenLineage."),
    "consent": ("consent", "Record consent changes of data subjects."),
    "contract": ("contract", "Event types' data contracts: export one as an Open Data Contract Standard document."),
    "console": ("webconsole", "Serve the web console: flows between agencies, denials, lag, agreements, DLQ, audit (login required)."),
    "demo": ("demo", "Run the whole backbone on this machine: produce, enforce, pseudonymise, land, detect fraud, report."),
    "dp": ("dp", "Differentially private releases: aggregates with noise, within budgets sealed in the audit trail."),
    "dlq": ("dlq", "Dead-letter queues: what was refused, why, and replay after a fix."),
    "erase": ("erase", "Erase one person: future events denied `erased` (but under agreements that survive erasure), "
                       "their rows deleted from every recipient database, their dead letters made unreadable, ..."),
    "fraud": ("fraud", "Fraud detection on pseudonymised data."),
    "keys": ("keys", "The keyring: pseudonym and encryption keys."),
    "portal": ("portal", "The citizen's portal: each person sees every disclosure about them, with receipts."),
    "process": ("process", "Run a processor worker: enforce the agreements on every raw topic. Start more to scale out."),
    "produce": ("produce", "Send synthetic agency events (with planted fraud) to `raw.<event_type>` through the producer SDK."),
    "quality": ("quality", "Quality gating: records waiting for their window's verdict, and windows a stopped worker left held."),
    "registry": ("registry", "The backbone's schema registry: its users."),
    "schemas": ("schemas", "Register, list, check and show event schemas in the schema registry."),
    "sink": ("sink", "Land shared.<recipient>.* (and audit.decisions) into per-agency ClickHouse databases; Ctrl-C stops cleanly."),
    "status": ("status", "Topics, consumer lag, registry subjects, recent decisions, DLQ entries, rows per agency and "
                         "the oldest row of each table against its retention."),
    "topics": ("topics", "Manage Kafka topics."),
    "up": ("stack", "Run the embedded stack (broker, registry) in the foreground and print its connection strings "
                    "and the registry credentials every backbone client sends (fresh each start)."),
}


_ASKS_FOR_HELP = "backbone.asks_for_help"


class _LazyGroup(TyperGroup):
    """The root group: imports a command's module when the command is asked for; the command list
    in `backbone --help` comes from `COMMANDS` without importing anything."""

    _listing = False

    def list_commands(self, ctx: Any) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None or cmd_name not in COMMANDS:
            return command
        module, help_line = COMMANDS[cmd_name]
        if self._listing and f"{__name__}.{module.split()[0]}" not in sys.modules:
            return TyperCommand(cmd_name, help=help_line)  # a line in the list: the module is not needed for it
        for name in module.split():
            importlib.import_module(f"{__name__}.{name}")  # registers itself on `app`
        command = typer.main.get_command(app).commands.get(cmd_name)  # type: ignore[attr-defined]
        if command is not None:
            self.add_command(command, cmd_name)
        return command

    def invoke(self, ctx: Any) -> Any:
        ctx.meta[_ASKS_FOR_HELP] = "--help" in (*ctx._protected_args, *ctx.args)  # noqa: SLF001 - cleared before the callback runs
        return super().invoke(ctx)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


def get_settings() -> Settings:
    """The settings, imported when a command runs: pydantic-settings is most of a command's start-up
    cost, and building a command's `--help` needs none of it."""
    from backbone.settings import get_settings as settings

    return settings()


def load_settings(**overrides: Any) -> Settings:
    """`backbone.settings.load_settings`, imported when a command runs (see `get_settings`)."""
    from backbone.settings import load_settings as load

    return load(**overrides)


app = typer.Typer(help="Data Sharing Backbone: agreement-enforced real-time data sharing.", no_args_is_help=True, cls=_LazyGroup)
console = Console()
err_console = Console(stderr=True)


@app.callback()
def root(ctx: typer.Context,
         verbose: bool = typer.Option(False, "--verbose", "-v", help="Show INFO log lines, libraries' included")) -> None:
    """Data Sharing Backbone: agreement-enforced real-time data sharing between agencies."""
    # The root's callback runs before a subcommand reads its own `--help`: help logs nothing and
    # needs no settings, so it loads none (tests/test_cli_startup.py).
    if not ctx.meta.get(_ASKS_FOR_HELP):
        _configure_logging(verbose)


# The backbone's own loggers: at BACKBONE_LOG_LEVEL (INFO) even when libraries' are held at WARNING.
OWN_LOGGERS = ("backbone", "processors", "consumers", "producers", "app", "bench")


def _configure_logging(verbose: bool) -> None:
    """A command prints its own output: libraries' INFO lines (an HTTP request each, a connection
    made) show only with `-v` or a BACKBONE_LOG_LEVEL the user set; the backbone's own at its level."""
    from backbone.settings import load_settings
    from backbone.telemetry.logs import NOISY_LOGGERS, configure_logging

    settings = load_settings()
    chosen = "log_level" in settings.model_fields_set
    level = "INFO" if verbose and not chosen else settings.log_level
    configure_logging(settings, level)
    if verbose:  # asked for: a line per HTTP request too
        for name in NOISY_LOGGERS:
            logging.getLogger(name).setLevel(level)
    elif not chosen:
        logging.getLogger().setLevel(max(logging.WARNING, logging.getLevelName(level)))
        for name in OWN_LOGGERS:
            logging.getLogger(name).setLevel(level)


@app.command()
def version() -> None:
    """Print the backbone version."""
    console.print(f"backbone {__version__}")


def _register() -> None:
    """Import every command's module (tests and tools that walk the whole command tree)."""
    for modules, _ in COMMANDS.values():
        for name in modules.split():
            importlib.import_module(f"{__name__}.{name}")


def main() -> None:
    """Console-script entry point."""
    private_umask()  # before anything is written: data, keys, logs and the chDB directory are this user's only
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
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
