"""Oversight look-ups in the audit database: every disclosure about one person.

Audit records name the subject only by a pseudonym in the `oversight` sharing domain, made by the
processor with the same pseudonym function and keyring; the look-up computes the same pseudonym.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from clickhouse_connect.driver.client import Client

from backbone.keys.keyring import OVERSIGHT_DOMAIN, Keyring
from backbone.keys.pseudonym import token
from backbone.policy.agreements import Agreement, Charter
from backbone.policy.decision import QUALITY_BREACH, QUALITY_PENDING
from backbone.policy.released import released_fields
from backbone.quality.gating import release_event_id
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
    source_event_id: str = ""  # the provider's id for the event (of a release: the release's own audit id)
    recipient_event_id: str = ""  # the recipient's own id for it: the row to look for in its database
    outcome: str = "permit"  # permit (disclosed), or quality_pending: the record waited for its quality window
    story: str = ""  # of a gated record: what its wait became, or which waiting event a release releases

    @property
    def disclosed(self) -> bool:
        return self.outcome == "permit"


def gated_story(waits: Iterable[tuple[str, str]], rows: Iterable[tuple[str, str, str, datetime]]) -> tuple[dict[tuple[str, str], str],
                                                                                                          dict[tuple[str, str], str]]:
    """The story of each record that waited for its quality window, told from the audit rows alone.

    `waits`: (event id, recipient) of the `quality_pending` rows; `rows`: (event id, recipient,
    outcome, decided at) of the subject's rows. A release is audited under `release_event_id` of the
    waiting event's id, so the two pair without any other data. Returns (what each wait became, by
    (event id, recipient); which event each release releases, by (release id, recipient))."""
    waits = set(waits)
    source = {release_event_id(event_id): event_id for event_id, _ in waits}
    became: dict[tuple[str, str], str] = {}
    releases: dict[tuple[str, str], str] = {}
    for event_id, recipient, outcome, at in rows:
        waited = source.get(event_id)
        if waited is None or (waited, recipient) not in waits:
            continue
        releases[(event_id, recipient)] = f"releases event {waited}, which waited for its quality window"
        when = f"{at:%Y-%m-%d %H:%M:%S}"
        if outcome == "permit":
            what = f"released {when} (audit event {event_id})"
        elif outcome == QUALITY_BREACH:
            what = f"held {when}: its window was below the agreement's quality bar (audit event {event_id})"
        else:
            what = f"not shared {when}: {outcome} (audit event {event_id})"
        became[(waited, recipient)] = f"waited for its quality window: {what}"
    for wait in waits - set(became):
        became[wait] = ("waited for its quality window: not released yet (the window is open, or its worker stopped "
                        "and holds it: see `backbone quality pending`)")
    return became, releases


def subject_token(keyring: Keyring, national_id: str) -> str:
    """The subject's pseudonym in the oversight domain, as audit records carry it."""
    return token(OVERSIGHT_DOMAIN, national_id, keyring=keyring)


def disclosures(client: Client, database_prefix: str, token_text: str, charter: Charter | None = None) -> list[Disclosure]:
    """Every permitted release about the subject with `token_text`, oldest first (each event once),
    and each record that waited for its quality window (`outcome` quality_pending), with its story:
    the wait names what it became, the release names the event it releases (`gated_story`).

    Audit records name the agreement version; its purposes and the fields it released come from
    `charter` (the versions the files and `agreements.changes` define). A version the charter does
    not know shows no purposes and no fields rather than guessed ones."""
    table = ddl.qualified(ddl.database_name(database_prefix, ddl.AUDIT_DATABASE), ddl.AUDIT_TABLE)
    result = client.query(
        f"SELECT decided_at, recipient, event_type, agreement_id, agreement_version, "
        "toString(event_id), ifNull(toString(recipient_event_id), ''), ifNull(reason, 'permit') "
        f"FROM {table} WHERE subject_token = {{token:String}} "
        "ORDER BY decided_at, recipient, event_type",
        parameters={"token": token_text},
    )
    rows = result.result_rows
    became, releases = gated_story(((r[5], r[1]) for r in rows if r[7] == QUALITY_PENDING), ((r[5], r[1], r[7], r[0]) for r in rows))
    found = []
    for at, recipient, event_type, agreement_id, version, source, theirs, outcome in rows:
        if outcome not in ("permit", QUALITY_PENDING):
            continue  # a denial disclosed nothing (a held release is told by its wait)
        purposes: tuple[str, ...] = ()
        fields: tuple[str, ...] = ()
        agreement = _version(charter, agreement_id, version)
        if agreement is not None and event_type in charter.catalog.events and event_type in agreement.event_types:  # type: ignore[union-attr]
            purposes = agreement.purposes
            fields = released_fields(agreement, charter.catalog.events[event_type])  # type: ignore[union-attr]
        if outcome == QUALITY_PENDING:
            fields = ()  # nothing disclosed by the wait: its release says what was
        story = became.get((source, recipient), "") if outcome == QUALITY_PENDING else releases.get((source, recipient), "")
        found.append(Disclosure(at, recipient, event_type, agreement_id or "", version or 0, purposes, fields, source, theirs,
                                outcome, story))
    return found


def _version(charter: Charter | None, agreement_id: str | None, version: int | None) -> Agreement | None:
    if charter is None or not agreement_id or version is None:
        return None
    for agreement in charter.agreements:
        if agreement.id == agreement_id and agreement.version == version:
            return agreement
    return None
