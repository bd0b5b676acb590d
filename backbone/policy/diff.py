"""What an agreement change widens: two texts of an agreement compared term by term, pure.

`diff(old, new, catalog)` lists each change per recipient and event type, classified **widening**
(the recipient may learn, keep, join or use something it could not before) or **narrowing**, with
the reason. A new agreement is a widening from nothing. Anything the comparison cannot order is
widening (fail closed), so an approval is asked for rather than a disclosure missed.

Treatments, by what a recipient learns from a field under each:

    drop          nothing
    generalise    a coarse class of the value (year, month, band, prefix) that many subjects share
    mask          part of the value in clear (its last N characters and its length), unkeyed, so the
                  same in every domain and against outside data (the loader counts it as an exact link)
    pseudonymise  nothing of the value, but equality: a keyed token, stable inside the sharing domain
    encrypt       the same equality, and reversible with the provider's key
    keep          the whole value

The order is partial: drop reveals least and keep most; encrypt reveals all that pseudonymise does
and more. Between generalise, mask and pseudonymise/encrypt neither side reveals all the other does
(a prefix says where, a pseudonym says who is the same, a mask shows digits), so a change between
them shows the recipient something new and counts as widening. Within one treatment the parameters
order the grain: times year < month < day < hour (and `keep` finest, the envelope `occurred_at`
included); a longer prefix is finer; bands reveal on which side of each edge the value lies, so a
new edge is finer (widening) and only removing edges is coarser; masking that keeps more trailing
characters is finer.

Which events a text selects (its condition, its purposes, its lawful basis) cannot be ordered by
reading it: a changed condition, a removed purpose (events that permit only the remaining purposes
now qualify) and a changed basis are judged by a replay of real events (`backbone.control.replay`,
then `judge`); until judged they count as widening.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import datetime, time
from typing import Any, Literal

import yaml

from backbone.events.catalog import Catalog, EventSchema
from backbone.policy.agreements import ENVELOPE_TREATABLE, GOVERNANCE, RELEASED_HEADER, Agreement, Charter, FieldTreatment
from backbone.policy.dp_diff import dp_changes
from backbone.quality.contract import Threshold

Classification = Literal["widening", "narrowing"]
WIDENING: Classification = "widening"
NARROWING: Classification = "narrowing"
# `kind` of a change, in the order the table shows them
KINDS = ("agreement", "recipient", "event_type", "status", "validity", "purpose", "lawful_basis", "condition",
         "identified", "survives_erasure", "notice", "domain", "linkable_by", "retention_days", "quality", "occurred_at", "field",
         "treatment", "dp_release")
# terms that select events, judged by a replay: kind -> the agreement attribute it concerns
SELECTION_TERMS = {"condition": "condition", "purpose": "purposes", "lawful_basis": "lawful_basis"}
PENDING = "changed: judged by --replay"
_TIME_GRAINS = ("year", "month", "day", "hour")
_KEEP = FieldTreatment(name="keep")


@dataclass(slots=True, frozen=True)
class Change:
    """One change of one term, as it concerns one recipient and one event type."""

    recipient: str
    event_type: str
    kind: str
    field: str | None
    old: str | None
    new: str | None
    classification: Classification
    reason: str
    judged_by_replay: bool = False  # a selection term: the classification awaits `judge`

    @property
    def widening(self) -> bool:
        return self.classification == WIDENING

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("judged_by_replay")
        return data


@dataclass(slots=True, frozen=True)
class Verdict:
    """What a replay says about one selection term: of `events` replayed, how many the new text
    releases that it would hold back with the old value of the term, and the reverse."""

    events: int
    newly_selected: int
    deselected: int


def baseline(charter: Charter, agreement: Agreement) -> Agreement | None:
    """The text publishing `agreement` replaces: the same id@version if the charter has it, else the
    version of its id in force (`Charter.current`); None for a new id."""
    for known in charter.agreements:
        if known.key == agreement.key:
            return known
    return charter.current(agreement.id) if charter.versions(agreement.id) else None


def diff(old: Agreement | None, new: Agreement | None, catalog: Catalog) -> list[Change]:
    """Every change from `old` to `new` per recipient and event type (None: no agreement)."""
    if old is None:
        return _whole(new, catalog, WIDENING) + dp_changes(old, new)
    if new is None:
        return _whole(old, catalog, NARROWING) + dp_changes(old, new)
    if old.recipient != new.recipient:
        return [*_whole(old, catalog, NARROWING, moved_to=new.recipient), *_whole(new, catalog, WIDENING, moved_from=old.recipient)]
    changes: list[Change] = []
    for event_type in new.event_types:
        if event_type not in old.event_types:
            changes.append(Change(new.recipient, event_type, "event_type", None, None, _released(new, catalog.events.get(event_type)),
                                  WIDENING, f"{new.recipient} newly receives {event_type} under {new.id}"))
    for event_type in old.event_types:
        if event_type not in new.event_types:
            changes.append(Change(old.recipient, event_type, "event_type", None, _released(old, catalog.events.get(event_type)), None,
                                  NARROWING, f"{old.recipient} no longer receives {event_type} under {old.id}"))
    for event_type in (t for t in new.event_types if t in old.event_types):
        changes.extend(_terms(old, new, event_type))
        changes.extend(_fields(old, new, event_type, catalog.events.get(event_type)))
    changes.extend(dp_changes(old, new))
    return sorted(changes, key=lambda c: (c.recipient, c.event_type, KINDS.index(c.kind)))


def judge(changes: Iterable[Change], verdicts: Mapping[tuple[str, str, str], Verdict]) -> list[Change]:
    """The changes with each selection term classified by its replay verdict, keyed by (recipient,
    event type, kind). A term the replay had no events for stays widening (fail closed)."""
    judged = []
    for change in changes:
        verdict = verdicts.get((change.recipient, change.event_type, change.kind)) if change.judged_by_replay else None
        if verdict is None:
            judged.append(change)
            continue
        lead = "purpose removed" if change.kind == "purpose" else "changed"
        term = "old " + SELECTION_TERMS[change.kind].replace("_", " ")
        if verdict.events == 0:
            reason = f"{lead}: the replay had no {change.event_type} events to judge it by; counted as widening (fail closed)"
            classification = WIDENING
        elif verdict.newly_selected:
            reason = (f"{lead}: in a replay of {verdict.events} events, {verdict.newly_selected} are released that the {term}"
                      " held back")
            classification = WIDENING
        else:
            reason = (f"{lead}: in a replay of {verdict.events} events, none is released that the {term} held back"
                      f" ({verdict.deselected} fewer released)")
            classification = NARROWING
        judged.append(replace(change, classification=classification, reason=reason))
    return judged


def widens(changes: Iterable[Change]) -> bool:
    return any(change.widening for change in changes)


def report(old: Agreement | None, new: Agreement | None, changes: list[Change], replay: Any = None) -> dict[str, Any]:
    """The stable JSON document of a diff (`--format json`): `replay` has a `to_json()` or is None."""
    return {
        "old": old.key if old else None,
        "new": new.key if new else None,
        "widening": widens(changes),
        "changes": [change.to_json() for change in changes],
        "replay": replay.to_json() if replay is not None else None,
    }


def treatment_text(treatment: FieldTreatment | None) -> str | None:
    """`keep`, `{generalise: {prefix: 4}}`: how the YAML writes it (None: not released)."""
    if treatment is None:
        return None
    if treatment.params is None:
        return treatment.name
    return yaml.safe_dump(treatment.to_yaml(), default_flow_style=True, width=10_000).strip()


def compare_treatments(old: FieldTreatment, new: FieldTreatment) -> tuple[Classification, str] | None:
    """Whether a field released under `old` and now under `new` reveals more (None: the same)."""
    if old == new:
        return None
    if old.name == new.name:
        return _compare_params(old.name, old.params, new.params)
    if new.name == "keep":
        return WIDENING, f"weakened: {old.name} -> keep releases the value itself"
    if old.name == "keep":
        return NARROWING, f"strengthened: keep -> {new.name} no longer releases the value itself"
    if (old.name, new.name) == ("pseudonymise", "encrypt"):
        return WIDENING, "weakened: encrypt links like a pseudonym and can be reversed with the provider's key"
    if (old.name, new.name) == ("encrypt", "pseudonymise"):
        return NARROWING, "strengthened: a pseudonym links like the encrypt token but cannot be reversed"
    return WIDENING, (f"not comparable: {new.name} reveals what {old.name} did not"
                      f" ({_REVEALS.get(new.name, new.name)}); counted as widening")


_REVEALS = {
    "generalise": "a coarse class of the value",
    "mask": "trailing characters and the length in clear, the same in every domain",
    "pseudonymise": "which records are about the same value, inside the domain",
    "encrypt": "which records are about the same value, reversibly",
}


def _compare_params(name: str, old: Any, new: Any) -> tuple[Classification, str] | None:
    if name == "mask":
        before, after = _mask_last(old), _mask_last(new)
        if before == after:
            return None
        if after > before:
            return WIDENING, f"weakened: mask keeps the last {after} characters in clear instead of {before}"
        return NARROWING, f"strengthened: mask keeps the last {after} characters in clear instead of {before}"
    if name != "generalise":
        return None
    (old_kind, old_grain), (new_kind, new_grain) = _grain(old), _grain(new)
    if old_kind != new_kind:
        return WIDENING, f"not comparable: generalise {new_kind} instead of {old_kind}; counted as widening"
    if old_kind == "bands":
        added, removed = sorted(new_grain - old_grain), sorted(old_grain - new_grain)
        if added:
            return WIDENING, f"weakened: new band edges {_edges(added)} tell on which side of them a value lies"
        return (NARROWING, f"strengthened: band edges {_edges(removed)} removed") if removed else None
    if old_grain == new_grain:
        return None
    if old_kind == "other":
        return WIDENING, "not comparable: generalise parameters changed; counted as widening"
    shown = {"time": lambda g: _TIME_GRAINS[g], "prefix": lambda g: f"the first {g} characters"}[old_kind]
    if new_grain > old_grain:
        return WIDENING, f"weakened: generalised to {shown(new_grain)} instead of {shown(old_grain)} (finer)"
    return NARROWING, f"strengthened: generalised to {shown(new_grain)} instead of {shown(old_grain)} (coarser)"


def _grain(params: Any) -> tuple[str, Any]:
    if isinstance(params, dict) and set(params) == {"to"}:
        params = params["to"]
    if params in _TIME_GRAINS:
        return "time", _TIME_GRAINS.index(params)
    if isinstance(params, dict) and set(params) == {"prefix"}:
        return "prefix", params["prefix"]
    if isinstance(params, dict) and set(params) == {"bands"}:
        return "bands", frozenset(params["bands"])
    return "other", repr(params)


def _mask_last(params: Any) -> int:
    return params["keep_last"] if isinstance(params, dict) else params


def _edges(edges: list[float]) -> str:
    return "[" + ", ".join(f"{edge:g}" for edge in edges) + "]"


def _released(agreement: Agreement, schema: EventSchema | None) -> str:
    """`national_id: pseudonymise, period: keep`: the payload fields released, in schema order."""
    names = list(schema.fields) if schema is not None else list(agreement.fields)
    shown = [f"{name}: {treatment_text(agreement.fields[name])}" for name in names
             if name in agreement.fields and agreement.fields[name].name != "drop"]
    return ", ".join(shown) or "header fields only"


def _whole(agreement: Agreement | None, catalog: Catalog, classification: Classification,
           moved_to: str | None = None, moved_from: str | None = None) -> list[Change]:
    """A whole agreement coming (widening) or going (narrowing), one row per event type."""
    if agreement is None:
        return []
    rows = []
    for event_type in agreement.event_types:
        released = _released(agreement, catalog.events.get(event_type))
        if moved_from is not None:
            rows.append(Change(agreement.recipient, event_type, "recipient", None, moved_from, agreement.recipient, WIDENING,
                               f"recipient changed: {agreement.recipient} newly receives {event_type} (was {moved_from}'s)"))
        elif moved_to is not None:
            rows.append(Change(agreement.recipient, event_type, "recipient", None, agreement.recipient, moved_to, NARROWING,
                               f"recipient changed: {agreement.recipient} no longer receives {event_type} (now {moved_to}'s)"))
        elif classification == WIDENING:
            rows.append(Change(agreement.recipient, event_type, "agreement", None, None, released, WIDENING,
                               f"new agreement {agreement.key}: {agreement.recipient} newly receives {event_type}"))
        else:
            rows.append(Change(agreement.recipient, event_type, "agreement", None, released, None, NARROWING,
                               f"agreement {agreement.key} withdrawn: {agreement.recipient} no longer receives {event_type}"))
    return rows


def _terms(old: Agreement, new: Agreement, event_type: str) -> list[Change]:
    """Agreement-wide terms, as they concern one event type."""
    rows: list[Change] = []

    def row(kind: str, before: Any, after: Any, classification: Classification, reason: str,
            field: str | None = None, pending: bool = False) -> None:
        rows.append(Change(new.recipient, event_type, kind, field, _text(before), _text(after), classification, reason, pending))

    if old.status != new.status:
        if new.status == "active":
            row("status", old.status, new.status, WIDENING, f"comes into force ({old.status} -> active)")
        else:
            row("status", old.status, new.status, NARROWING, f"{new.status}: not in force")
    if new.valid_from != old.valid_from:
        earlier = new.valid_from < old.valid_from
        row("validity", old.valid_from, new.valid_from, WIDENING if earlier else NARROWING,
            "validity extended: starts earlier" if earlier else "validity shortened: starts later", "valid_from")
    if new.valid_until != old.valid_until:
        later = new.valid_until is None or (old.valid_until is not None and new.valid_until > old.valid_until)
        row("validity", old.valid_until or "open-ended", new.valid_until or "open-ended", WIDENING if later else NARROWING,
            "validity extended: ends later" if later else "validity shortened: ends earlier", "valid_until")
    for purpose in new.purposes:
        if purpose not in old.purposes:
            row("purpose", None, purpose, WIDENING, f"purpose added: the recipient may use the data for {purpose}")
    for purpose in old.purposes:
        if purpose not in new.purposes:
            row("purpose", purpose, None, WIDENING, f"purpose removed: narrower use, but events permitting only the"
                f" remaining purposes now qualify; {PENDING}", pending=True)
    if new.lawful_basis != old.lawful_basis:
        if old.lawful_basis == "consent":
            row("lawful_basis", old.lawful_basis, new.lawful_basis, WIDENING,
                "consent no longer needed: subjects who never consented or withdrew are shared too")
        else:
            row("lawful_basis", old.lawful_basis, new.lawful_basis, WIDENING, f"other events match the basis; {PENDING}", pending=True)
    if new.condition != old.condition:
        if new.condition is None:
            row("condition", old.condition, None, WIDENING, "condition removed: every event passes")
        elif old.condition is None:
            row("condition", None, new.condition, NARROWING, "condition added: only events passing it are released")
        else:
            row("condition", old.condition, new.condition, WIDENING, PENDING, pending=True)
    if new.identified != old.identified:
        row("identified", old.identified, new.identified, WIDENING if new.identified else NARROWING,
            "identified: PII may be kept in clear and selected on" if new.identified else "no longer identified")
    if new.survives_erasure != old.survives_erasure:
        row("survives_erasure", old.survives_erasure, new.survives_erasure, WIDENING if new.survives_erasure else NARROWING,
            "events about erased people are released again under this agreement" if new.survives_erasure
            else "erased people's events are denied again")
    if new.notice != old.notice:
        hidden = _secrecy(new) > _secrecy(old)
        row("notice", _notice_text(old), _notice_text(new), WIDENING if hidden else NARROWING,
            "the people concerned are told later or never (their portal hides these disclosures)" if hidden
            else "the people concerned are told sooner")
    if new.domain != old.domain:
        if new.domain is None:
            row("domain", old.domain, None, NARROWING, "no sharing domain: records join nobody else's")
        else:
            row("domain", old.domain, new.domain, WIDENING,
                f"pseudonyms and record keys become joinable with the {new.domain} domain's other recipients")
    for name in new.linkable_by:
        if name not in old.linkable_by:
            row("linkable_by", None, name, WIDENING, f"records may link across sharing domains on {name}", name)
    for name in old.linkable_by:
        if name not in new.linkable_by:
            row("linkable_by", name, None, NARROWING, f"no longer declared linkable on {name}", name)
    if new.retention_days != old.retention_days:
        longer = new.retention_days > old.retention_days
        row("retention_days", old.retention_days, new.retention_days, WIDENING if longer else NARROWING,
            "retention extended: the recipient keeps records longer" if longer else "retention shortened")
    for dimension in sorted({*old.require_quality, *new.require_quality}):
        before, after = old.require_quality.get(dimension), new.require_quality.get(dimension)
        if before == after:
            continue
        if after is None:
            row("quality", str(before), None, WIDENING, f"no {dimension} bar: records of windows of any {dimension} are released",
                dimension)
        elif before is None:
            row("quality", None, str(after), NARROWING, f"{dimension} bar added: records of windows below it are "
                f"{'held' if new.on_quality_breach == 'hold' else 'flagged'}", dimension)
        else:
            lower = _bar(after) < _bar(before)
            row("quality", str(before), str(after), WIDENING if lower else NARROWING,
                f"{dimension} bar lowered: records of poorer windows are released" if lower else f"{dimension} bar raised",
                dimension)
    if new.on_quality_breach != old.on_quality_breach and (old.require_quality or new.require_quality):
        flagged = new.on_quality_breach == "flag"
        row("quality", old.on_quality_breach, new.on_quality_breach, WIDENING if flagged else NARROWING,
            "records of windows below a bar are delivered, flagged, instead of held" if flagged
            else "records of windows below a bar are held instead of delivered flagged")
    return rows


def _secrecy(agreement: Agreement) -> tuple[int, Any]:
    """How long the people concerned wait to see a disclosure: at once < until a date (later is
    longer) < until oversight releases it < never (suppressed)."""
    notice = agreement.notice
    if notice is None:
        return (0, "")
    if notice.deferred_until is not None:
        return (1, notice.deferred_until.isoformat())
    return (2, "") if notice.until_released else (3, "")


def _notice_text(agreement: Agreement) -> str:
    notice = agreement.notice
    if notice is None:
        return "shown at once"
    if notice.deferred_until is not None:
        return f"deferred until {notice.deferred_until:%Y-%m-%d}"
    if notice.until_released:
        return "until released by oversight"
    return f"suppressed ({notice.suppressed.legal_reference})"  # type: ignore[union-attr]


def _bar(threshold: Threshold) -> tuple[float, int]:
    """How strict a bar is: by its value, then `>` above `>=` at the same value."""
    return (threshold.value, 1 if threshold.op == ">" else 0)


def _fields(old: Agreement, new: Agreement, event_type: str, schema: EventSchema | None) -> list[Change]:
    """Each released field of one event type: added, removed, or under another treatment."""
    names = list(schema.fields) if schema is not None else sorted({*old.fields, *new.fields})
    rows = []
    for name in names:
        if name in RELEASED_HEADER and name not in ENVELOPE_TREATABLE or name == GOVERNANCE:
            continue
        envelope = name in ENVELOPE_TREATABLE
        before, after = (_envelope(old, name), _envelope(new, name)) if envelope else (_payload(old, name), _payload(new, name))
        tags = sorted(schema.fields[name].tags) if schema is not None and name in schema.fields else []
        what = f"{name} ({', '.join(tags)})" if tags else name
        kind = "occurred_at" if envelope else "treatment"
        if before is None and after is None:
            continue
        if before is None:
            rows.append(Change(new.recipient, event_type, "field", name, None, treatment_text(after), WIDENING,
                               f"field added: {what} newly released as {treatment_text(after)}"))
        elif after is None:
            rows.append(Change(new.recipient, event_type, "field", name, treatment_text(before), None, NARROWING,
                               f"field removed: {what} no longer released"))
        else:
            compared = compare_treatments(before, after)
            if compared is not None:
                classification, reason = compared
                if envelope:
                    reason = reason.replace("generalised to", "event time to", 1)
                rows.append(Change(new.recipient, event_type, kind, name, treatment_text(before), treatment_text(after),
                                   classification, f"{what}: {reason}"))
    return rows


def _payload(agreement: Agreement, name: str) -> FieldTreatment | None:
    treatment = agreement.fields.get(name)
    return None if treatment is None or treatment.name == "drop" else treatment


def _envelope(agreement: Agreement, name: str) -> FieldTreatment:
    return agreement.fields.get(name) or _KEEP  # an envelope field not listed is released as it is


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date().isoformat() if value.time() == time() else value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
