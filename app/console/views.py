"""HTML of the console, rendered on the server from a `Snapshot`: no template engine, no build
step. Every value from the stack goes through `html.escape`; the only script is /static/live.js.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from html import escape
from urllib.parse import quote

from app.console.snapshot import PERMIT, Snapshot

STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:.6em 1.2em;display:flex;gap:1.5em;align-items:center}
header a{color:#cfe3ff} main{padding:1em 1.2em} section{background:#fff;border:1px solid #dde;border-radius:6px;
padding:.6em 1em;margin-bottom:1em} table{border-collapse:collapse} td,th{padding:.2em .8em;border-bottom:1px solid #eee;
text-align:left;vertical-align:top} .num{text-align:right} .bad{color:#b00020;font-weight:600} .good{color:#1b6e20;font-weight:600}
.badge{padding:.1em .5em;border-radius:4px;background:#e4f4e4} .badge.suspended,.badge.revoked{background:#b00020;color:#fff}
.badge.draft,.badge.expired,.badge.not-yet-valid{background:#eee} .unreachable{border-color:#b00020} .dim{color:#778} form.inline{display:inline}
"""


def page(title: str, body: str, user: str | None = None, role: str | None = None) -> str:
    nav = ""
    if user and role == "handler":  # an agency's handler sees its grievances only
        nav = ('<a href="/grievances">Grievances</a>' f'<span class="dim">{escape(user)} ({escape(role)})</span>'
               '<form class="inline" method="post" action="/logout"><button>Log out</button></form>')
    elif user:
        nav = ('<a href="/">Overview</a><a href="/charter">Charter</a><a href="/grievances">Grievances</a><a href="/quality">Quality</a>'
               + ('<a href="/subject">Subject</a>' if role == "oversight" else "")
               + f'<span class="dim">{escape(user)} ({escape(role or "")})</span>'
               '<form class="inline" method="post" action="/logout"><button>Log out</button></form>')
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)} - backbone console</title>'
            f'<style>{STYLE}</style><script src="/static/live.js" defer></script></head>'
            f'<body><header><strong>Data Sharing Backbone</strong>{nav}</header><main>{body}</main></body></html>')


def login_form(problem: str | None = None) -> str:
    shown = f'<p class="bad">{escape(problem)}</p>' if problem else ""
    return page("Log in", f'<section><h1>Log in</h1>{shown}<form method="post" action="/login">'
                '<p><label>User <input name="user" autocomplete="username" required></label></p>'
                '<p><label>Password <input name="password" type="password" autocomplete="current-password" required></label></p>'
                '<p><button>Log in</button></p></form></section>')


def _table(headings: Iterable[str], rows: Iterable[Iterable[object]], empty: str) -> str:
    body = "".join("<tr>" + "".join(f'<td class="num">{value:,}</td>' if isinstance(value, int) else f"<td>{escape(str(value))}</td>"
                                    for value in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="dim">{escape(empty)}</p>'
    return "<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in headings) + f"</tr>{body}</table>"


# Edge labels sit on their curve at the first of these positions (Bezier parameter) where they
# overlap no label already placed: with the demo's eight agencies, midpoints alone collide.
LABEL_SPOTS = (0.5, 0.36, 0.64, 0.24, 0.76, 0.14, 0.86)
LABEL_CHAR_PX, LABEL_HEIGHT_PX = 6.2, 13.0


def _edges(snapshot: Snapshot) -> tuple[list[tuple[str, str]], dict[tuple[str, str], int], dict[tuple[str, str], dict[str, int]]]:
    """Every (provider, recipient) pair of the charter or of a recent decision; permitted counts and
    denials by reason per pair."""
    pairs: set[tuple[str, str]] = set()
    if snapshot.charter is not None:
        pairs |= {(a.provider, a.recipient) for a in snapshot.charter.agreements}
    permitted: dict[tuple[str, str], int] = defaultdict(int)
    denied: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for flow in snapshot.flows:
        edge = (flow.provider, flow.recipient)
        pairs.add(edge)
        if flow.outcome == PERMIT:
            permitted[edge] += flow.count
        else:
            denied[edge][flow.outcome] = denied[edge].get(flow.outcome, 0) + flow.count
    return sorted(pairs), permitted, denied


def _on_curve(t: float, y1: float, y2: float) -> tuple[float, float]:
    """The point at `t` of the edge's cubic Bezier (170,y1) (380,y1) (420,y2) (630,y2)."""
    u = 1 - t
    return (u ** 3 * 170 + 3 * u * u * t * 380 + 3 * u * t * t * 420 + t ** 3 * 630,
            u ** 3 * y1 + 3 * u * u * t * y1 + 3 * u * t * t * y2 + t ** 3 * y2)


def _place(label: str, y1: float, y2: float, taken: list[tuple[float, float, float, float]]) -> tuple[float, float]:
    half = len(label) * LABEL_CHAR_PX / 2 + 2
    for t in LABEL_SPOTS:
        x, y = _on_curve(t, y1, y2)
        box = (x - half, y - LABEL_HEIGHT_PX, x + half, y)
        if not any(box[0] < o[2] and o[0] < box[2] and box[1] < o[3] and o[1] < box[3] for o in taken):
            taken.append(box)
            return x, y - 3
    x, y = _on_curve(0.5, y1, y2)
    return x, y - 3


def flow_svg(snapshot: Snapshot) -> str:
    """Providers on the left, recipients on the right; an edge per agreement's pair (dashed while
    nothing flows), its width by permitted events/s, its denials beside it (by reason in its
    tooltip and in the table `flow_table` draws)."""
    pairs, permitted, denied = _edges(snapshot)
    if not pairs:
        return '<p class="dim">No agreements and no decisions to draw.</p>'
    providers = sorted({p for p, _ in pairs})
    recipients = sorted({r for _, r in pairs})
    row = 56
    height = max(len(providers), len(recipients)) * row + 20
    y_of = {("p", name): 30 + i * row for i, name in enumerate(providers)}
    y_of |= {("r", name): 30 + i * row for i, name in enumerate(recipients)}
    busiest = max(permitted.values(), default=0) or 1
    parts, labels, taken = [], [], []
    for provider, recipient in pairs:
        y1, y2 = y_of[("p", provider)], y_of[("r", recipient)]
        rate = permitted[(provider, recipient)] / snapshot.window_s
        width = 1.5 + 12 * permitted[(provider, recipient)] / busiest
        dash = "" if permitted[(provider, recipient)] else ' stroke-dasharray="6 4"'
        reasons = ", ".join(f"{reason} {n:,}" for reason, n in sorted(denied[(provider, recipient)].items()))
        title = f"{rate:.1f}/s" + (f" · denied: {reasons}" if reasons else "")
        label = f"{rate:.1f}/s" + (f" · {sum(denied[(provider, recipient)].values()):,} denied" if reasons else "")
        fill = ' fill="#b00020"' if reasons else ""
        x, y = _place(label, y1, y2, taken)
        edge = (f'<g class="edge"><title>{escape(provider)} → {escape(recipient)}: {escape(title)}</title>'
                f'<path d="M170 {y1} C 380 {y1}, 420 {y2}, 630 {y2}" fill="none" stroke="#3b6fd1" stroke-opacity=".6" '
                f'stroke-width="{width:.1f}"{dash}/></g>')
        lineage = _lineage_key(snapshot, provider, recipient)  # clicking an edge opens its agreement's lineage
        parts.append(f'<a href="/catalog/lineage/{quote(lineage)}">{edge}</a>' if lineage else edge)
        # labels after every path, so no edge is drawn over one; the halo keeps them readable on a curve
        labels.append(f'<text x="{x:.0f}" y="{y:.0f}" font-size="11" text-anchor="middle" stroke="#fff" stroke-width="3" '
                      f'paint-order="stroke" class="edge-label"{fill}><title>{escape(provider)} → {escape(recipient)}: '
                      f'{escape(title)}</title>{escape(label)}</text>')
    parts += labels
    for side, names, x, anchor in (("p", providers, 160, "end"), ("r", recipients, 640, "start")):
        for name in names:
            y = y_of[(side, name)]
            parts.append(f'<circle cx="{x + (10 if side == "p" else -10)}" cy="{y}" r="6" fill="#1d2330"/>'
                         f'<text x="{x - (6 if side == "p" else -6)}" y="{y + 4}" text-anchor="{anchor}" '
                         f'class="agency {"provider" if side == "p" else "recipient"}">{escape(name)}</text>')
    return (f'<svg role="img" aria-label="flows from providers to recipients" viewBox="0 0 800 {height}" width="800" '
            f'height="{height}" xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>')


def _lineage_key(snapshot: Snapshot, provider: str, recipient: str) -> str | None:
    """The agreement version of a flow its picture links to: one in force now, else the highest."""
    if snapshot.charter is None:
        return None
    now = datetime.now(UTC)
    found = sorted((a for a in snapshot.charter.agreements if (a.provider, a.recipient) == (provider, recipient)),
                   key=lambda a: (a.in_force_at(now), a.version))
    return found[-1].key if found else None


def catalog_links(snapshot: Snapshot, provider: str, recipient: str) -> str:
    """Links from one flow to its lineage (each agreement version between the two) and catalogue
    entries (the recipient's AsyncAPI, the provider's record of processing, the DCAT-AP catalogue)."""
    if snapshot.charter is None:
        return "-"
    keys = sorted(a.key for a in snapshot.charter.agreements if (a.provider, a.recipient) == (provider, recipient))
    links = [f'<a href="/catalog/lineage/{quote(key)}">lineage {escape(key)}</a>' for key in keys]
    links += [f'<a href="/catalog/asyncapi/{quote(recipient)}">AsyncAPI</a>', f'<a href="/catalog/ropa/{quote(provider)}">record of processing</a>',
              '<a href="/catalog/dcat/catalog">DCAT-AP</a>'] if keys else []
    return " · ".join(links) or "-"


def flow_table(snapshot: Snapshot) -> str:
    """The picture's edges as rows: permitted events/s and denials by reason, each edge on its own
    line, with links to its lineage and catalogue entries."""
    pairs, permitted, denied = _edges(snapshot)
    if not pairs:
        return ""
    rows = "".join(
        f"<tr><td>{escape(p)} → {escape(r)}</td><td class=\"num\">{permitted[(p, r)] / snapshot.window_s:.1f}</td>"
        f"<td class=\"num\">{permitted[(p, r)]:,}</td>"
        f"<td>{escape(', '.join(f'{reason} {n:,}' for reason, n in sorted(denied[(p, r)].items())) or '-')}</td>"
        f"<td>{catalog_links(snapshot, p, r)}</td></tr>" for p, r in pairs)
    return ("<table><tr><th>flow</th><th>permitted/s</th><th>permitted</th><th>denied by reason</th>"
            f"<th>lineage and catalogue</th></tr>{rows}</table>")


def live(snapshot: Snapshot) -> str:
    """The part of the overview the event stream replaces."""
    status = snapshot.status
    out = []
    if status.unreachable:
        out.append('<section class="unreachable"><h2 class="bad">Unreachable</h2>'
                   + _table(("part", "why"), sorted(status.unreachable.items()), "") + "</section>")
    minutes = snapshot.window_s / 60
    out.append(f"<section><h2>Flows, last {minutes:g} min</h2>{flow_svg(snapshot)}{flow_table(snapshot)}</section>")
    out.append(audit_section(snapshot))
    out.append(f"<section><h2>Decisions by recipient, last {minutes:g} min</h2>" + _table(
        ("recipient", "decision", "events"), status.decisions,
        "ClickHouse unreachable." if "clickhouse" in status.unreachable else "No decisions yet.") + "</section>")
    dlq = sorted((*key.split(": ", 1), n) for key, n in status.dlq.items())
    out.append("<section><h2>Dead-letter queues</h2>" + _table(("stage", "reason", "entries"), dlq,
               "Kafka unreachable." if {"kafka", "dlq"} & set(status.unreachable) else "No dead letters.") + "</section>")
    out.append("<section><h2>Consumer lag</h2>" + _table(("group", "topics", "committed", "lag"),
               ((g.group, g.topics, g.committed, g.lag) for g in status.groups),
               "Kafka unreachable." if "kafka" in status.unreachable else "No consumer groups.") + "</section>")
    if status.agreement_problems:
        out.append('<section class="unreachable"><h2 class="bad">Agreement changes that cannot be applied (denied)</h2>'
                   + _table(("agreement", "why"), sorted(status.agreement_problems.items()), "") + "</section>")
    out.append("<section><h2>Rows per agency database</h2>" + _table(("database", "rows"), status.rows,
               "ClickHouse unreachable." if "clickhouse" in status.unreachable else "No rows yet.") + "</section>")
    out.append(f"<section><h2>Registry subjects ({len(status.subjects)})</h2>" + _table(("subject",), ((s,) for s in status.subjects),
               "Schema registry unreachable." if "schema registry" in status.unreachable else "No subjects.") + "</section>")
    out.append(f'<p class="dim">as of {time.strftime("%H:%M:%S", time.localtime(snapshot.taken_at))}</p>')
    return "".join(out)


def audit_section(snapshot: Snapshot) -> str:
    """Whether the landed audit trail verifies (signatures, chains, Merkle roots), as last checked."""
    audit = snapshot.audit
    if audit is None:
        why = snapshot.status.unreachable.get("audit trail") or snapshot.status.unreachable.get("clickhouse") or "not checked yet"
        return f'<section id="audit"><h2>Audit trail</h2><p class="dim">Not verified: {escape(why)}</p></section>'
    checked = time.strftime("%H:%M:%S", time.localtime(audit.checked_at))
    counts = f"{audit.checkpoints:,} checkpoints, {audit.decisions:,} decisions, {audit.operations:,} operator actions"
    if audit.ok:
        return (f'<section id="audit"><h2>Audit trail</h2><p class="good">Verified: {counts}</p>'
                f'<p class="dim">checked {checked}; <code>backbone audit verify</code> checks it too</p></section>')
    failures = "".join(f"<li>{escape(f)}</li>" for f in audit.failures)
    return (f'<section id="audit" class="unreachable"><h2 class="bad">Audit trail NOT verified</h2><p>{counts} verified; '
            f"failures:</p><ul>{failures}</ul><p class=\"dim\">checked {checked}</p></section>")


def overview(snapshot: Snapshot, user: str, role: str) -> str:
    return page("Overview", f'<div id="live" data-stream="/events">{live(snapshot)}</div>', user, role)


def charter(snapshot: Snapshot, user: str, role: str) -> str:
    if snapshot.charter is None:
        why = snapshot.status.unreachable.get("charter", "not loaded")
        return page("Charter", f'<section class="unreachable"><h1>Charter</h1><p class="bad">{escape(why)}</p></section>', user, role)
    overlay = {key: state for key, state, _, _ in snapshot.status.agreement_changes}
    now = datetime.now(UTC)
    rows = []
    for agreement in sorted(snapshot.charter.agreements, key=lambda a: (a.id, a.version)):
        key = f"{agreement.id}@{agreement.version}"
        state = "suspended" if key in snapshot.status.agreement_problems else overlay.get(key, agreement.status)
        if state == "active" and not agreement.valid_at(now):  # active, but outside its validity period: not in force
            state = "expired" if agreement.valid_until is not None and now >= agreement.valid_until else "not yet valid"
        until = f"{agreement.valid_until:%Y-%m-%d}" if agreement.valid_until is not None else "open"
        fields = "<br>".join(f"{escape(name)}: {escape(t.name)}{escape('(' + str(t.params) + ')') if t.params is not None else ''}"
                             for name, t in agreement.fields.items())
        rows.append(f'<tr class="{escape(state)}"><td>{escape(key)}</td><td><span class="badge {escape(state.replace(" ", "-"))}">'
                    f"{escape(state)}</span></td><td>{agreement.valid_from:%Y-%m-%d} – {until}</td>"
                    f"<td>{escape(agreement.provider)} → {escape(agreement.recipient)}</td>"
                    f"<td>{escape(', '.join(agreement.purposes))}</td><td>{fields}</td></tr>")
    table = ("<table><tr><th>agreement</th><th>status</th><th>valid</th><th>flow</th><th>purposes</th><th>fields and treatments</th></tr>"
             + "".join(rows) + "</table>")
    return page("Charter", f"<section><h1>Charter</h1>{table}</section>", user, role)


def subject_form(user: str, role: str, found: list | None = None, token: str | None = None, problem: str | None = None,
                 verdict: tuple[bool | None, str] | None = None) -> str:
    body = ('<section><h1>Disclosures about one person</h1><form method="post" action="/subject">'
            '<label>National id <input name="national_id" autocomplete="off" required></label> <button>Look up</button>'
            '</form><p class="dim">The id is never stored: only its oversight pseudonym is looked up.</p></section>')
    if problem:
        body += f'<section class="unreachable"><p class="bad">{escape(problem)}</p></section>'
    if found is not None:
        body += (f"<section><h2>{sum(1 for d in found if d.disclosed)} disclosures about subject {escape(token or '')}</h2>"
                 + _table(("when (UTC)", "recipient", "event", "agreement", "purposes", "fields", "quality gate"),
                          ((d.decided_at.strftime("%Y-%m-%d %H:%M:%S"), d.recipient, d.event_type, f"{d.agreement_id}@{d.agreement_version}",
                            ", ".join(d.purposes), ", ".join(d.fields), d.story) for d in found), "No disclosures.") + "</section>")
    if verdict is not None:
        verified, text = verdict
        css = {True: "good", False: "bad", None: "dim"}[verified]
        body += f'<section id="verification"><p class="{css}">{escape(text)}</p></section>'
    return page("Subject", body, user, role)


LIVE_JS = """
// Replaces the live part of the page with each `status` event of the server's stream.
document.addEventListener("DOMContentLoaded", () => {
  const live = document.getElementById("live");
  if (!live || !window.EventSource) return;
  const stream = new EventSource(live.dataset.stream);
  stream.addEventListener("status", (event) => { live.innerHTML = event.data; });
});
"""
