"""`backbone agreements apply|suspend|revoke|activate`: change agreements in flight.

Changes go to the compacted `agreements.changes` topic; every processor worker applies them
without a restart.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from app.cli import console, err_console, get_settings
from app.cli.agreements import agreements_app
from app.cli.roles import needs
from backbone.errors import BackboneError

if TYPE_CHECKING:
    from backbone.audit import operations
    from backbone.events.catalog import Catalog
    from backbone.policy.agreements import Agreement, Charter
    from backbone.policy.diff import Change
    from backbone.settings import Settings

_APPROVER = re.compile(r"^[^\x00-\x1f\x7f]{1,128}$")


@agreements_app.command("apply")
@needs("operator")
def apply(
    path: Path = typer.Argument(..., help="An agreement YAML file, or a directory of them"),
    approved_by: str = typer.Option(None, "--approved-by", help="Who approved a change that widens disclosure (required for"
                                    " one; recorded in agreements.changes and on audit.operations)"),
) -> None:
    """Validate agreements and publish them to the running processors. A change that widens what a
    recipient receives (as `backbone agreements diff` shows it) against the text it replaces is
    refused unless --approved-by names who approved it; every apply is recorded on audit.operations."""
    from backbone.audit import operations
    from backbone.control import agreement_changes
    from backbone.events.catalog import load_catalog
    from backbone.policy.agreements import load_agreements

    settings = get_settings()
    catalog = load_catalog(settings.schemas_dir)
    charter = load_agreements(path, catalog)
    approver = approved_by.strip() if approved_by else None
    if approved_by is not None and not (approver and _APPROVER.match(approver)):
        raise BackboneError("--approved-by must name who approved the change (one line, at most 128 characters)")
    widening = _widening(settings, catalog, charter)
    if any(widening.values()) and approver is None:
        err_console.print(_refusal(widening), highlight=False, soft_wrap=True, markup=False)
        raise SystemExit(1)
    actions = [_action(settings, agreement, widening[agreement.key], approver) for agreement in charter.agreements]
    for action in actions:  # recorded before published: no change is in force without its record
        operations.record(settings, action)
    try:
        agreement_changes.publish(settings, list(charter.agreements), approved_by=approver)
    except BackboneError:
        for action in actions:
            try:
                operations.record(settings, replace(action, outcome="failed", action_id=str(uuid.uuid4()),
                                                    details={**action.details, "recorded_as": action.action_id}))
            except BackboneError:
                pass  # the first record stands; the error below says the change is not published
        raise
    for agreement in charter.agreements:
        approved = f", approved by {approver}" if widening[agreement.key] and approver else ""
        console.print(f"applied {agreement.key} ({agreement.status}): {agreement.provider} -> {agreement.recipient}{approved}",
                      highlight=False)


def _widening(settings: Settings, catalog: Catalog, charter: Charter) -> dict[str, list[Change]]:
    """Per agreement to apply, the changes that widen disclosure against the text it replaces, as
    the processors hold them now (the files, then agreements.changes in log order)."""
    from backbone.control import agreement_changes
    from backbone.policy.agreements import Charter, load_agreements
    from backbone.policy.diff import baseline, diff

    versions, _ = agreement_changes.published(settings, load_agreements(settings.agreements_dir, catalog))
    held = Charter(catalog, tuple(versions.values()))
    return {a.key: [c for c in diff(baseline(held, a), a, catalog) if c.widening] for a in charter.agreements}


def _refusal(widening: dict[str, list[Change]]) -> str:
    widened = [(key, changes) for key, changes in widening.items() if changes]
    key, changes = widened[0]
    others = f" (and {len(widened) - 1} more agreements)" if len(widened) > 1 else ""
    more = f" and {len(changes) - 1} more" if len(changes) > 1 else ""
    return (f"refused: {key} widens what {changes[0].recipient} receives ({changes[0].reason}{more}){others}; review it with"
            f" `backbone agreements diff`, then apply with --approved-by NAME")


def _action(settings: Settings, agreement: Agreement, widening: list[Change], approver: str | None) -> operations.OperatorAction:
    from backbone.audit import operations
    from backbone.control import agreement_changes

    details = {"widening": "yes" if widening else "no", "version": str(agreement.version)}
    if approver:
        details["approved_by"] = approver
    reason = "; ".join(dict.fromkeys(change.reason for change in widening))[:1000] or None
    return operations.OperatorAction("agreement_apply", settings.identity or agreement_changes.UNIDENTIFIED, agreement.key, "done",
                                     reason, details)


def _change(agreement_id: str, version: int | None, status: str) -> None:
    from backbone.control import agreement_changes
    from backbone.events.catalog import load_catalog
    from backbone.policy.agreements import load_agreements

    settings = get_settings()
    charter = load_agreements(settings.agreements_dir, load_catalog(settings.schemas_dir))
    changed = agreement_changes.change_status(settings, charter, agreement_id, version, status)
    console.print(f"{changed.key} is now {status}; running processors apply it to the next events")


@agreements_app.command("suspend")
@needs("operator")
def suspend(agreement_id: str, version: int = typer.Option(None, "--version", help="Default: the highest version")) -> None:
    """Suspend an agreement: its sharing stops in flight (denied as agreement_inactive)."""
    _change(agreement_id, version, "suspended")


@agreements_app.command("revoke")
@needs("operator")
def revoke(agreement_id: str, version: int = typer.Option(None, "--version", help="Default: the highest version")) -> None:
    """Revoke an agreement for good: its sharing stops in flight."""
    _change(agreement_id, version, "revoked")


@agreements_app.command("activate")
@needs("operator")
def activate(agreement_id: str, version: int = typer.Option(None, "--version", help="Default: the highest version")) -> None:
    """(Re)activate a suspended or draft agreement version."""
    _change(agreement_id, version, "active")
