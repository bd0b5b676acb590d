"""What the portal shows a signed-in person: their entries in the audit trail, read by their
oversight pseudonyms (never the id), joined with the agreement version each decision names.

An entry is a permit (a disclosure), or a denial the person caused and should see as such
(`consent_withdrawn`, `erased`); other denials disclosed nothing and are not shown. Each entry
carries its agreement's notice: entries under a deferred notice stay hidden until the date or a
release by oversight (`backbone portal release`, an operator action `notice_release` in the trail),
suppressed ones are never shown and only counted for oversight (`suppressed_counts`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from clickhouse_connect.driver.client import Client

from backbone.policy.agreements import Agreement, Charter
from consumers import ddl
from consumers.audit import gated_story

SHOWN_OUTCOMES = ("permit", "consent_withdrawn", "erased")
QUALITY_PENDING, QUALITY_BREACH = "quality_pending", "quality_breach"  # a wait for the quality window; a held release
NOTICE_RELEASE = "notice_release"

# Plain language for each purpose of the vocabulary (schemas/purposes.yaml); an unknown id shows its label.
EXPLANATIONS = {
    "fraud_prevention_and_detection": "to check that benefits and taxes are paid correctly and to find fraud",
    "service_provision": "to provide a public service you receive, such as paying a benefit to your current address",
    "official_statistics": "to produce official statistics, in which no single person can be recognised",
    "law_enforcement": "to prevent, investigate or prosecute crime",
    "scientific_research": "for scientific research, with your identity replaced by a code",
    "legal_compliance": "because a law requires the agency to keep or pass on this information",
    "identity_verification": "to confirm who you are",
    "personalised_service": "to tailor a service to you, which needs your consent",
}
BASES = {
    "consent": "your consent (you may withdraw it here)",
    "contract": "a contract you are party to",
    "legal_obligation": "a legal obligation of the agency",
    "vital_interests": "to protect someone's life",
    "public_task": "a task in the public interest set by law",
    "legitimate_interests": "the agency's legitimate interests (you may object)",
}
OUTCOME_TEXT = {
    "permit": "shared",
    "consent_withdrawn": "not shared: you withdrew your consent",
    "erased": "not shared: your data was erased",
    QUALITY_PENDING: "waited: the recipient's agreement asks that the data's quality be checked first",
}


@dataclass(slots=True, frozen=True)
class Entry:
    """One decision about the person, as the portal shows it (no value of any field)."""

    event_id: str
    decided_at: datetime
    provider: str
    recipient: str
    event_type: str
    outcome: str  # permit, consent_withdrawn, erased
    agreement: str  # id@version, "" when no agreement applied
    purposes: tuple[str, ...] = ()
    lawful_basis: str = ""
    fields: tuple[tuple[str, str], ...] = ()  # (field, treatment)
    notice: str = "immediate"  # immediate, deferred, until_released, suppressed
    story: str = ""  # of a record that waited for its quality window: what became of it; of its release: which wait it ends

    @property
    def entry_id(self) -> str:
        """Names the entry inside the person's own list (an event and recipient), never a person."""
        return f"{self.event_id}.{self.recipient}"

    def to_json(self, explain: Mapping[str, str]) -> dict[str, object]:
        return {"entry": self.entry_id, "decided_at": self.decided_at.isoformat(), "from": self.provider, "to": self.recipient,
                "event_type": self.event_type, "outcome": self.outcome, "shown_as": OUTCOME_TEXT.get(self.outcome, self.outcome),
                "agreement": self.agreement or None, "purposes": list(self.purposes),
                "explanations": {p: explain.get(p, p) for p in self.purposes},
                "lawful_basis": self.lawful_basis or None, "fields": [{"field": f, "treatment": t} for f, t in self.fields],
                "notice": self.notice, "story": self.story or None, "receipt": f"/receipt/{self.entry_id}"}


@dataclass(slots=True)
class Releases:
    """Agreements oversight has released the deferred notice of: agreement id -> when."""

    at: dict[str, datetime] = field(default_factory=dict)


def _treatment(treatment: object) -> str:
    name, params = getattr(treatment, "name", str(treatment)), getattr(treatment, "params", None)
    if params is None:
        return str(name)
    if isinstance(params, dict):
        return f"{name} ({', '.join(f'{k} {v}' for k, v in params.items())})"
    return f"{name} ({params})"


def _agreement(charter: Charter, agreement_id: str | None, version: int | None) -> Agreement | None:
    if not agreement_id or version is None:
        return None
    for agreement in charter.agreements:
        if agreement.id == agreement_id and agreement.version == version:
            return agreement
    return None


def entries(client: Client, database_prefix: str, tokens: Iterable[str], charter: Charter) -> list[Entry]:
    """Every shown decision about the subject with one of `tokens` (oldest first), whatever its notice."""
    tokens = list(tokens)
    if not tokens:
        return []
    # the records table itself, filtered by the subject before the decisions are unfolded (the view
    # `audit.decisions` reads every record FINAL first); a redelivered record is an identical copy: DISTINCT
    events = ddl.qualified(ddl.database_name(database_prefix, ddl.AUDIT_DATABASE), ddl.AUDIT_EVENTS_TABLE)
    rows = client.query(
        f"SELECT DISTINCT toString(event_id), decided_at, provider, d.recipient, event_type, toString(d.outcome), "
        f"ifNull(d.agreement_id, ''), d.agreement_version FROM {events} ARRAY JOIN decisions AS d "
        "WHERE subject_token IN {tokens:Array(String)} AND toString(d.outcome) IN {shown:Array(String)} "
        "ORDER BY decided_at, event_type, d.recipient",
        parameters={"tokens": tokens, "shown": [*SHOWN_OUTCOMES, QUALITY_PENDING, QUALITY_BREACH]}).result_rows
    # a record gated on its quality window is one story: its wait and its release (under an id derived from the event's)
    became, releases = gated_story(((r[0], r[3]) for r in rows if r[5] == QUALITY_PENDING), ((r[0], r[3], r[5], r[1]) for r in rows))
    found = []
    for event_id, at, provider, recipient, event_type, outcome, agreement_id, version in rows:
        if outcome == QUALITY_BREACH:
            continue  # a held release disclosed nothing: its wait's story says it was held
        agreement = _agreement(charter, agreement_id, version)
        purposes: tuple[str, ...] = ()
        basis, fields, notice = "", (), "immediate"
        if agreement is not None:
            purposes, basis = agreement.purposes, agreement.lawful_basis
            fields = tuple((name, _treatment(t)) for name, t in agreement.fields.items() if t.name != "drop")  # dropped: not shared
            notice = agreement.notice.kind if agreement.notice is not None else "immediate"
        decided = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
        if outcome == QUALITY_PENDING:
            fields = ()  # nothing disclosed by the wait: its release says what was
        story = became.get((event_id, recipient), "") if outcome == QUALITY_PENDING else releases.get((event_id, recipient), "")
        found.append(Entry(event_id, decided, provider, recipient, event_type, outcome,
                           f"{agreement_id}@{version}" if agreement_id else "", purposes, basis, fields, notice, story))
    return found


def read_releases(client: Client, database_prefix: str) -> Releases:
    """The `notice_release` operator actions landed in the audit database (agreement id -> first release)."""
    table = ddl.qualified(ddl.database_name(database_prefix, ddl.AUDIT_DATABASE), ddl.OPERATIONS_TABLE)
    exists = client.query("SELECT count() FROM system.tables WHERE database = {d:String} AND name = {t:String}",
                          parameters={"d": ddl.database_name(database_prefix, ddl.AUDIT_DATABASE), "t": ddl.OPERATIONS_TABLE}).result_rows
    if not exists or not exists[0][0]:
        return Releases()
    rows = client.query(f"SELECT target, min(at) FROM {table} WHERE action = {{a:String}} AND outcome = 'done' GROUP BY target",
                        parameters={"a": NOTICE_RELEASE}).result_rows
    return Releases({target: (at if at.tzinfo is not None else at.replace(tzinfo=UTC)) for target, at in rows})


def visible(entry: Entry, charter: Charter, releases: Releases, now: datetime) -> bool:
    """Whether the person may see `entry` now: at once, after the deferral date, after a release."""
    if entry.notice == "immediate":
        return True
    agreement_id, _, version = entry.agreement.partition("@")
    agreement = _agreement(charter, agreement_id, int(version)) if version.isdigit() else None
    if agreement is None or agreement.notice is None:
        return False  # a notice said so once and the version is gone: keep it hidden rather than guess
    notice = agreement.notice
    if notice.suppressed is not None:
        return False
    if notice.deferred_until is not None and now >= notice.deferred_until:
        return True
    return agreement_id in releases.at


def suppressed_counts(client: Client, database_prefix: str, charter: Charter, releases: Releases, now: datetime) -> dict[str, int]:
    """Per agreement id, how many decisions the people concerned cannot see now (oversight's count)."""
    held = [a for a in charter.agreements if a.notice is not None]
    if not held:
        return {}
    view = ddl.qualified(ddl.database_name(database_prefix, ddl.AUDIT_DATABASE), ddl.AUDIT_TABLE)
    rows = client.query(f"SELECT agreement_id, agreement_version, uniqExact(event_id, recipient) FROM {view} "
                        "WHERE agreement_id IN {ids:Array(String)} AND ifNull(reason, 'permit') IN {shown:Array(String)} "
                        "GROUP BY agreement_id, agreement_version",
                        parameters={"ids": sorted({a.id for a in held}), "shown": list(SHOWN_OUTCOMES)}).result_rows
    counts: dict[str, int] = {}
    for agreement_id, version, count in rows:
        probe = Entry("", now, "", "", "", "permit", f"{agreement_id}@{version}", notice="held")
        if not visible(probe, charter, releases, now):
            counts[f"{agreement_id}@{version}"] = counts.get(f"{agreement_id}@{version}", 0) + int(count)
    return counts
