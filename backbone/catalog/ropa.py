"""The GDPR Art. 30 record of processing activities, per controller agency, from the charter.

Every agreement version (any status) is a processing activity of two controllers: the provider,
which discloses (Art. 30(1)(d): the recipient), and the recipient, which receives and uses. Each
activity names its purposes (with DPV concepts), lawful basis, categories of data subjects and of
personal data (from the event schemas' field tags, with the form the recipient gets them in),
recipients, retention, and the safeguards the backbone enforces for it.
"""

from __future__ import annotations

import html
import re
from typing import Any

from backbone.catalog.flows import Flow, agreement_flows
from backbone.catalog.terms import LAWFUL_BASES, agreement_hash, purpose_iri
from backbone.events.catalog import HEADER_FIELDS
from backbone.policy.agreements import Agreement, Charter

CATEGORIES = {"PII": "direct identifier", "QUASI_ID": "quasi-identifier", "SENSITIVE": "special category (GDPR Art. 9/10)"}
_SUBJECT = re.compile(r"\bof the ([a-z][a-z ]*?)\.?$")
SAFEGUARDS_ALWAYS = (
    "enforced in flight by the processors, fail closed: anything unexpected denies",
    "every permit and denial recorded in the signed, Merkle-chained audit trail (no personal data in it)",
    "fields the agreement does not list are never released",
    "keys held by the processors only (HMAC and AES-SIV keyring or PKCS#11 token), never in topics, tables or logs",
)


def _subjects(flow: Flow) -> str:
    subject = flow.schema.subject_field
    doc = flow.schema.fields[subject].doc if subject else ""
    match = _SUBJECT.search(doc)
    return f"{match.group(1)}s ({flow.event_type})" if match else f"persons the {flow.event_type} events concern"


def _data(flow: Flow) -> list[dict[str, Any]]:
    released = {column.name: column for column in flow.columns}
    out = []
    for name, info in flow.schema.fields.items():
        if name in HEADER_FIELDS:
            continue
        category = ", ".join(CATEGORIES[tag] for tag in sorted(info.tags) if tag in CATEGORIES) or "other data"
        column = released.get(name)
        out.append({"event_type": flow.event_type, "field": name, "description": info.doc, "category": category,
                    "released_as": column.description if column else "not released"})
    return out


def _safeguards(agreement: Agreement, flows: tuple[Flow, ...]) -> list[str]:
    by_treatment: dict[str, list[str]] = {}
    for flow in flows:
        for column in flow.columns:
            if column.name in agreement.fields:
                by_treatment.setdefault(column.treatment, []).append(column.name)
    words = {
        "pseudonymise": f"pseudonymised in the {agreement.domain} sharing domain (HMAC-SHA256 under the domain key; unlinkable across domains)",
        "encrypt": f"encrypted with AES-SIV under the {agreement.provider} provider key (reversible by the provider only)",
        "generalise": "generalised (coarser dates, bands, prefixes)",
        "mask": "masked",
    }
    found = [f"{words[t]}: {', '.join(sorted(set(names)))}" for t, names in sorted(by_treatment.items()) if t in words]
    dropped = sorted({name for flow in flows for name in flow.dropped})
    if dropped:
        found.append(f"not released: {', '.join(dropped)}")
    if agreement.condition:
        found.append(f"only events where {agreement.condition}")
    if agreement.lawful_basis == "consent":
        found.append("each event checked against the subject's consent; a withdrawal is honoured from the next event")
    found.append(f"rows removed {agreement.retention_days} days after the event (ClickHouse TTL on the recipient's tables)")
    return found + list(SAFEGUARDS_ALWAYS)


def activity(agreement: Agreement, charter: Charter, role: str) -> dict[str, Any]:
    """One processing activity: `role` is `provider` (disclosure) or `recipient` (receipt and use)."""
    flows = agreement_flows(agreement, charter)
    basis = LAWFUL_BASES[agreement.lawful_basis]
    catalog = charter.catalog
    other = agreement.recipient if role == "provider" else agreement.provider
    return {
        "agreement": agreement.id, "version": agreement.version, "hash": agreement_hash(agreement), "status": agreement.status,
        "source": charter.source(agreement), "title": agreement.title, "role": role,
        "name": (f"Disclosure of {', '.join(agreement.event_types)} to {other}" if role == "provider"
                 else f"Receipt and use of {', '.join(agreement.event_types)} from {other}"),
        "purposes": [{"id": p, "label": catalog.purposes[p].label, "dpv": purpose_iri(catalog, p)} for p in agreement.purposes],
        "lawful_basis": {"id": basis.id, "article": basis.article, "label": basis.label, "dpv": basis.dpv},
        "data_subjects": sorted({_subjects(flow) for flow in flows}),
        "personal_data": [item for flow in flows for item in _data(flow)],
        "recipients": [agreement.recipient] if role == "provider" else [],
        "source_agency": agreement.provider,
        "transfers_outside_eu": "none: every part runs where the deployment runs",
        "retention": {"days": agreement.retention_days, "counted_from": "the event's time"},
        "valid_from": agreement.valid_from.isoformat(),
        "valid_until": agreement.valid_until.isoformat() if agreement.valid_until else None,
        "safeguards": _safeguards(agreement, flows),
    }


def records(charter: Charter) -> dict[str, dict[str, Any]]:
    """The record of processing of every agency of the charter: agency -> its record."""
    ordered = sorted(charter.agreements, key=lambda a: (a.id, a.version))
    agencies = sorted({a.provider for a in ordered} | {a.recipient for a in ordered})
    return {agency: {
        "controller": agency,
        "regulation": "GDPR Art. 30(1): record of processing activities of a controller",
        "activities": [activity(a, charter, "provider") for a in ordered if a.provider == agency]
        + [activity(a, charter, "recipient") for a in ordered if a.recipient == agency],
    } for agency in agencies}


def _purposes(item: dict[str, Any]) -> str:
    return "; ".join(f"{p['label']} ({p['dpv']})" for p in item["purposes"])


def markdown(record: dict[str, Any]) -> str:
    """The record of one controller as Markdown."""
    lines = [f"# Record of processing activities: {record['controller']}", "", record["regulation"], ""]
    for item in record["activities"]:
        lines += [f"## {item['name']} (agreement {item['agreement']}@{item['version']}, {item['status']})", "",
                  f"- Agreement: {item['title']} ({item['source']}; terms SHA-256 {item['hash']})",
                  f"- Purposes: {_purposes(item)}",
                  f"- Lawful basis: {item['lawful_basis']['article']}, {item['lawful_basis']['label']}",
                  f"- Categories of data subjects: {'; '.join(item['data_subjects'])}",
                  f"- Recipients: {', '.join(item['recipients']) or 'none (this agency receives from ' + item['source_agency'] + ')'}",
                  f"- Transfers to third countries: {item['transfers_outside_eu']}",
                  f"- Retention: {item['retention']['days']} days from {item['retention']['counted_from']}",
                  f"- Valid from {item['valid_from']}" + (f" until {item['valid_until']}" if item["valid_until"] else ""),
                  "", "| event | field | category | released as |", "| --- | --- | --- | --- |"]
        lines += [f"| {d['event_type']} | {d['field']} | {d['category']} | {d['released_as']} |" for d in item["personal_data"]]
        lines += ["", "Safeguards:", *(f"- {s}" for s in item["safeguards"]), ""]
    return "\n".join(lines)


def html_page(record: dict[str, Any]) -> str:
    """The record of one controller as a self-contained HTML page."""
    e = html.escape
    parts = [f"<!doctype html><html lang=en><meta charset=utf-8><title>Record of processing: {e(record['controller'])}</title>",
             f"<h1>Record of processing activities: {e(record['controller'])}</h1><p>{e(record['regulation'])}</p>"]
    for item in record["activities"]:
        parts.append(f"<section id=\"{e(item['agreement'])}-{item['version']}-{item['role']}\"><h2>{e(item['name'])}"
                     f" (agreement {e(item['agreement'])}@{item['version']}, {e(item['status'])})</h2><dl>")
        rows = [("Agreement", f"{item['title']} ({item['source']}; terms SHA-256 {item['hash']})"),
                ("Purposes", _purposes(item)),
                ("Lawful basis", f"{item['lawful_basis']['article']}, {item['lawful_basis']['label']}"),
                ("Categories of data subjects", "; ".join(item["data_subjects"])),
                ("Recipients", ", ".join(item["recipients"]) or f"none (receives from {item['source_agency']})"),
                ("Transfers to third countries", item["transfers_outside_eu"]),
                ("Retention", f"{item['retention']['days']} days from {item['retention']['counted_from']}")]
        parts += [f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in rows]
        parts.append("</dl><table><tr><th>event</th><th>field</th><th>category</th><th>released as</th></tr>")
        parts += [f"<tr><td>{e(d['event_type'])}</td><td>{e(d['field'])}</td><td>{e(d['category'])}</td><td>{e(d['released_as'])}</td></tr>"
                  for d in item["personal_data"]]
        parts.append("</table><h3>Safeguards</h3><ul>" + "".join(f"<li>{e(s)}</li>" for s in item["safeguards"]) + "</ul></section>")
    return "".join(parts) + "</html>\n"
