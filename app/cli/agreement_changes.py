"""`backbone agreements apply|suspend|revoke|activate`: change agreements in flight.

Changes go to the compacted `agreements.changes` topic; every processor worker applies them
without a restart.
"""

from __future__ import annotations

from pathlib import Path

import typer

from backbone import agreement_changes
from backbone.catalog import load_catalog
from app.cli import console
from app.cli.agreements import agreements_app
from backbone.policy.agreements import load_agreements
from backbone.settings import get_settings


@agreements_app.command("apply")
def apply(path: Path = typer.Argument(..., help="An agreement YAML file, or a directory of them")) -> None:
    """Validate agreements and publish them to the running processors."""
    settings = get_settings()
    charter = load_agreements(path, load_catalog(settings.schemas_dir))
    agreement_changes.publish(settings, list(charter.agreements))
    for agreement in charter.agreements:
        console.print(f"applied {agreement.key} ({agreement.status}): {agreement.provider} -> {agreement.recipient}")


def _change(agreement_id: str, version: int | None, status: str) -> None:
    settings = get_settings()
    charter = load_agreements(settings.agreements_dir, load_catalog(settings.schemas_dir))
    changed = agreement_changes.change_status(settings, charter, agreement_id, version, status)
    console.print(f"{changed.key} is now {status}; running processors apply it to the next events")


@agreements_app.command("suspend")
def suspend(agreement_id: str, version: int = typer.Option(None, "--version", help="Default: the highest version")) -> None:
    """Suspend an agreement: its sharing stops in flight (denied as agreement_inactive)."""
    _change(agreement_id, version, "suspended")


@agreements_app.command("revoke")
def revoke(agreement_id: str, version: int = typer.Option(None, "--version", help="Default: the highest version")) -> None:
    """Revoke an agreement for good: its sharing stops in flight."""
    _change(agreement_id, version, "revoked")


@agreements_app.command("activate")
def activate(agreement_id: str, version: int = typer.Option(None, "--version", help="Default: the highest version")) -> None:
    """(Re)activate a suspended or draft agreement version."""
    _change(agreement_id, version, "active")
