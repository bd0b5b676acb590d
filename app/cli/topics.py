"""`backbone topics list|create|describe|delete`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.table import Table

from app.cli import app, console, get_settings
from app.cli.roles import needs
from backbone.errors import BackboneError

if TYPE_CHECKING:
    from backbone.kafka.topics import Topics

topics_app = typer.Typer(help="Manage Kafka topics.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")


def _topics() -> Topics:
    from backbone.kafka.topics import Topics  # with confluent-kafka: when a command runs, not for --help

    return Topics(get_settings())


@topics_app.command("list")
def list_topics(internal: bool = typer.Option(False, "--internal", help="Include __internal topics")) -> None:
    """List topics and their partition counts."""
    table = Table("topic", "partitions")
    for topic in _topics().list(include_internal=internal):
        table.add_row(topic.name, str(topic.partitions))
    console.print(table)


@topics_app.command("create")
@needs("operator")
def create(
    name: str,
    partitions: int = typer.Option(None, "--partitions", "-p", help="Partition count (default BACKBONE_KAFKA_PARTITIONS)"),
    retention_ms: int = typer.Option(None, "--retention-ms", help="retention.ms"),
    cleanup_policy: str = typer.Option(None, "--cleanup-policy", help="delete, compact or compact,delete"),
    config: list[str] = typer.Option([], "--config", help="Any other topic setting as KEY=VALUE (repeatable), e.g. segment.ms=3600000"),
) -> None:
    """Create a topic."""
    settings: dict[str, str] = {}
    for item in config:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise BackboneError(f"--config takes KEY=VALUE (e.g. segment.ms=3600000), not {item!r}")
        settings[key.strip()] = value.strip()
    info = _topics().create(name, partitions, retention_ms, cleanup_policy, config=settings)
    console.print(f"created {info.name} with {info.partitions} partitions")


@topics_app.command("describe")
def describe(name: str) -> None:
    """Show a topic's partitions and configuration."""
    info = _topics().describe(name)
    console.print(f"[bold]{info.name}[/bold]: {info.partitions} partitions")
    table = Table("config", "value")
    for key in sorted(info.config):
        table.add_row(key, info.config[key])
    console.print(table)


@topics_app.command("delete")
@needs("operator")
def delete(name: str) -> None:
    """Delete a topic."""
    _topics().delete(name)
    console.print(f"deleted {name}")
