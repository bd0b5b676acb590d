"""`backbone consent grant|withdraw`: record a data subject's consent change on `consent.changes`."""

from __future__ import annotations

import typer

from app.cli import app, console, get_settings
from backbone.errors import BackboneError

CHANNELS = ("web", "app", "letter", "counter")

consent_app = typer.Typer(help="Record consent changes of data subjects.", no_args_is_help=True)
app.add_typer(consent_app, name="consent")


def _publish(status: str, subject: str, purpose: str, channel: str) -> None:
    from backbone.events.catalog import load_catalog
    from producers.sdk import ConsentPublisher

    settings = get_settings()
    catalog = load_catalog(settings.schemas_dir)
    catalog.check_purpose(purpose)
    if channel not in CHANNELS:
        raise BackboneError(f"unknown channel {channel!r}; channels: {', '.join(CHANNELS)}")
    if not subject.strip():
        raise BackboneError("--subject must not be empty")
    with ConsentPublisher(settings, catalog) as publisher:
        publisher.change(subject, purpose, status, channel)
        key = publisher.subject_key(subject).decode()
    # The subject id itself is never echoed: the key prefix is enough to find the change on the topic.
    console.print(f"consent {status} for purpose {purpose} (subject key {key[:12]}…)", highlight=False)


@consent_app.command("grant")
def grant(
    subject: str = typer.Option(..., "--subject", "-s", help="National id of the data subject"),
    purpose: str = typer.Option(..., "--purpose", "-p", help="Purpose id from schemas/purposes.yaml"),
    channel: str = typer.Option("web", "--channel", help=f"Where the subject made the change: {', '.join(CHANNELS)}"),
) -> None:
    """Record that a data subject consents to a purpose."""
    _publish("granted", subject, purpose, channel)


@consent_app.command("withdraw")
def withdraw(
    subject: str = typer.Option(..., "--subject", "-s", help="National id of the data subject"),
    purpose: str = typer.Option(..., "--purpose", "-p", help="Purpose id from schemas/purposes.yaml"),
    channel: str = typer.Option("web", "--channel", help=f"Where the subject made the change: {', '.join(CHANNELS)}"),
) -> None:
    """Record that a data subject withdrew consent for a purpose; sharing under it stops in flight."""
    _publish("withdrawn", subject, purpose, channel)
