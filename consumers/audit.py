"""Oversight look-ups in the audit database: every disclosure about one person.

Audit records name the subject only by a pseudonym in the `oversight` sharing domain, made by the
processor with the same pseudonym function and keyring; the look-up computes the same pseudonym.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from clickhouse_connect.driver.client import Client

from backbone.keyring import OVERSIGHT_DOMAIN, Keyring
from backbone.policy.pseudonym import token
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


def disclosures(client: Client, database_prefix: str, token_text: str) -> list[Disclosure]:
    """Every permitted release about the subject with `token_text`, oldest first (each event once)."""
    table = ddl.qualified(ddl.database_name(database_prefix, ddl.AUDIT_DATABASE), ddl.AUDIT_TABLE)
    result = client.query(
        f"SELECT decided_at, recipient, event_type, agreement_id, agreement_version, purposes, released_fields, "
        "toString(event_id), ifNull(toString(recipient_event_id), '') "
        f"FROM {table} FINAL WHERE subject_token = {{token:String}} AND decision = 'permit' "
        "ORDER BY decided_at, recipient, event_type",
        parameters={"token": token_text},
    )
    return [
        Disclosure(at, recipient, event_type, agreement or "", version or 0, tuple(purposes), tuple(fields), source, theirs)
        for at, recipient, event_type, agreement, version, purposes, fields, source, theirs in result.result_rows
    ]
