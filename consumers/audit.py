"""Oversight look-ups in the audit database: every disclosure about one person.

Audit records name the subject only by a pseudonym in the `oversight` sharing domain, made by the
processor with the same pseudonym function and keyring; the look-up computes the same pseudonym.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from clickhouse_connect.driver.client import Client

from backbone.keys.keyring import OVERSIGHT_DOMAIN, Keyring
from backbone.keys.pseudonym import token
from backbone.policy.agreements import Agreement, Charter
from backbone.policy.released import released_fields
from consumers import ddl


@dataclass(slots=True, frozen=True)
class Disclosure:
    """One release of data about the subject to a recipient."""

    decided_at: datetime
    recipient: str
    event_type: str
    agreement_id: str
    agreement_version: int
    purposes: tuple[str, ...]
    fields: tuple[str, ...]
    source_event_id: str = ""  # the provider's id for the event
    recipient_event_id: str = ""  # the recipient's own id for it: the row to look for in its database


def subject_token(keyring: Keyring, national_id: str) -> str:
    """The subject's pseudonym in the oversight domain, as audit records carry it."""
    return token(OVERSIGHT_DOMAIN, national_id, keyring=keyring)


def disclosures(client: Client, database_prefix: str, token_text: str, charter: Charter | None = None) -> list[Disclosure]:
    """Every permitted release about the subject with `token_text`, oldest first (each event once).

    Audit records name the agreement version; its purposes and the fields it released come from
    `charter` (the versions the files and `agreements.changes` define). A version the charter does
    not know shows no purposes and no fields rather than guessed ones."""
    table = ddl.qualified(ddl.database_name(database_prefix, ddl.AUDIT_DATABASE), ddl.AUDIT_TABLE)
    result = client.query(
        f"SELECT decided_at, recipient, event_type, agreement_id, agreement_version, "
        "toString(event_id), ifNull(toString(recipient_event_id), '') "
        f"FROM {table} WHERE subject_token = {{token:String}} AND decision = 'permit' "
        "ORDER BY decided_at, recipient, event_type",
        parameters={"token": token_text},
    )
    found = []
    for at, recipient, event_type, agreement_id, version, source, theirs in result.result_rows:
        purposes: tuple[str, ...] = ()
        fields: tuple[str, ...] = ()
        agreement = _version(charter, agreement_id, version)
        if agreement is not None and event_type in charter.catalog.events and event_type in agreement.event_types:  # type: ignore[union-attr]
            purposes = agreement.purposes
            fields = released_fields(agreement, charter.catalog.events[event_type])  # type: ignore[union-attr]
        found.append(Disclosure(at, recipient, event_type, agreement_id or "", version or 0, purposes, fields, source, theirs))
    return found


def _version(charter: Charter | None, agreement_id: str | None, version: int | None) -> Agreement | None:
    if charter is None or not agreement_id or version is None:
        return None
    for agreement in charter.agreements:
        if agreement.id == agreement_id and agreement.version == version:
            return agreement
    return None
