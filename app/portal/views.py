"""HTML of the portal, rendered on the server; every value goes through `html.escape`; no script."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from html import escape

from app.console.views import STYLE
from app.portal.records import BASES, OUTCOME_TEXT, Entry


def page(title: str, body: str, csrf: str | None = None) -> str:
    nav = ""
    if csrf is not None:
        nav = ('<a href="/">My disclosures</a><a href="/consent">Consent and objections</a><a href="/grievances">Grievances</a>'
               f'<form class="inline" method="post" action="/logout"><input type="hidden" name="csrf" value="{escape(csrf)}">'
               '<button>Sign out</button></form>')
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)} - citizen\'s portal</title>'
            f'<style>{STYLE}</style></head><body><header><strong>Your data, shared between agencies</strong>{nav}</header>'
            f"<main>{body}</main></body></html>")


def message(title: str, text: str, csrf: str | None = None) -> str:
    return page(title, f'<section><h1>{escape(title)}</h1><p>{escape(text)}</p></section>', csrf)


def sign_in(token: str) -> str:
    """The link's page: signing in is a POST, so a mail scanner opening the link does not use it up."""
    return page("Sign in", '<section><h1>Sign in</h1><p>This link opens one session for you, once.</p>'
                '<form method="post" action="/signin">'
                f'<input type="hidden" name="t" value="{escape(token)}"><button id="sign-in">Sign in</button></form>'
                '<p class="dim">Or <a href="/oidc/login">sign in with your national eID</a>, where the portal offers it.</p></section>')


def _options(name: str, values: Iterable[str], chosen: str) -> str:
    items = "".join(f'<option value="{escape(v)}"{" selected" if v == chosen else ""}>{escape(v)}</option>' for v in sorted(set(values)))
    return f'<select name="{escape(name)}"><option value="">any</option>{items}</select>'


def disclosures(shown: list[Entry], every: list[Entry], filters: Mapping[str, str], explain: Mapping[str, str], csrf: str) -> str:
    form = ('<form method="get" action="/" id="filters">'
            f'<label>To {_options("to", (e.recipient for e in every), filters.get("to", ""))}</label> '
            f'<label>From {_options("from", (e.provider for e in every), filters.get("from", ""))}</label> '
            f'<label>Purpose {_options("purpose", (p for e in every for p in e.purposes), filters.get("purpose", ""))}</label> '
            f'<label>Outcome {_options("outcome", (e.outcome for e in every), filters.get("outcome", ""))}</label> '
            f'<label>Since <input type="date" name="since" value="{escape(filters.get("since", ""))}"></label> '
            '<button>Filter</button> <a href="/api/disclosures">as JSON</a></form>')
    rows = []
    for entry in shown:
        purposes = "".join(f"<li><strong>{escape(p)}</strong>: {escape(explain.get(p, p))}</li>" for p in entry.purposes)
        fields = ", ".join(f"{escape(f)} ({escape(t)})" for f, t in entry.fields) or "-"
        css = {"permit": "good", "quality_pending": "dim"}.get(entry.outcome, "bad")
        rows.append(f'<tr class="entry" data-entry="{escape(entry.entry_id)}"><td>{entry.decided_at:%Y-%m-%d %H:%M:%S}</td>'
                    f"<td>{escape(entry.provider)} → {escape(entry.recipient)}</td><td>{escape(entry.event_type)}</td>"
                    f'<td class="{css}">{escape(OUTCOME_TEXT.get(entry.outcome, entry.outcome))}'
                    + (f'<br><span class="dim story">{escape(entry.story)}</span>' if entry.story else "") + "</td>"
                    f"<td>{escape(entry.agreement or '-')}<br><span class=\"dim\">basis: "
                    f"{escape(BASES.get(entry.lawful_basis, entry.lawful_basis) or '-')}</span></td>"
                    f"<td><ul>{purposes}</ul></td><td>{fields}</td>"
                    f'<td><a class="receipt" href="/receipt/{escape(entry.entry_id)}">receipt</a> · '
                    f'<a href="/proof/{escape(entry.entry_id)}">check</a></td></tr>')
    table = ("<table><tr><th>when (UTC)</th><th>from → to</th><th>record</th><th>outcome</th><th>agreement</th>"
             "<th>why (purpose)</th><th>what (fields, how; never the values)</th><th>proof</th></tr>" + "".join(rows) + "</table>"
             if rows else '<p class="dim">Nothing to show.</p>')
    note = ('<p class="dim">Each receipt is a signed proof from the audit trail that anyone can check offline: '
            "<code>backbone audit verify-receipt receipt.json</code>. Some records may be shown later, when the law allows.</p>")
    return page("My disclosures", f'<section><h1>My disclosures</h1><p id="count">{len(shown)} of {len(every)} shown</p>'
                f"{form}{table}{note}</section>", csrf)


def proof(entry_id: str, sealing: object, problems: list[str], csrf: str) -> str:
    if problems:
        body = "<ul>" + "".join(f"<li>{escape(p)}</li>" for p in problems) + "</ul>"
        return page("Proof", f'<section class="unreachable"><h1 class="bad">Not verified</h1>{body}</section>', csrf)
    released = getattr(sealing, "released_at", None)
    when = (f"<p>Shown to you from {escape(str(released))}; it was sealed "
            f"{'before' if getattr(sealing, 'before_release', None) else 'NOT before'} that.</p>") if released else ""
    return page("Proof", f'<section><h1 class="good" id="verified">Verified</h1><p>This record is sealed, unaltered, in checkpoint '
                f"{getattr(sealing, 'checkpoint', '')} of writer {escape(str(getattr(sealing, 'writer', '')))}, signed "
                f"{escape(str(getattr(sealing, 'sealed_at', '')))}.</p>{when}"
                f'<p><a href="/receipt/{escape(entry_id)}">Download the receipt</a></p></section>', csrf)


def consent_page(purposes: list[tuple[str, str, str]], receipts: list[dict], csrf: str, done: str | None = None) -> str:
    """`purposes`: (id, label, plain explanation) of the purposes the person's records were shared for."""
    rows = "".join(
        f'<tr><td><strong>{escape(label)}</strong><br><span class="dim">{escape(text)}</span></td><td>'
        f'<form method="post" action="/consent/withdraw"><input type="hidden" name="csrf" value="{escape(csrf)}">'
        f'<input type="hidden" name="purpose" value="{escape(pid)}"><button name="kind" value="withdrawn">Withdraw consent</button> '
        f'<button name="kind" value="objected">Object</button></form></td></tr>' for pid, label, text in purposes)
    shown = f'<p class="good" id="done">{escape(done)}</p>' if done else ""
    kept = "".join(f'<li><a href="/consent/receipts/{i}">consent receipt {i + 1}: {escape(r["purposes"][0]["dct:identifier"])}, '
                   f'{escape(r["event"]["dpv:hasConsentStatus"])}</a></li>' for i, r in enumerate(receipts))
    return page("Consent and objections", f"<section><h1>Consent and objections</h1>{shown}"
                f"<table>{rows}</table><h2>Your consent receipts</h2><ul>{kept or '<li class=dim>none yet</li>'}</ul></section>", csrf)


def grievance_form(found: list[Entry], csrf: str, appealable: list[str]) -> str:
    """File a complaint about one of the person's entries; appeal an answer they rate poor."""
    options = "".join(f'<option value="{escape(e.entry_id)}">{e.decided_at:%Y-%m-%d} {escape(e.provider)} → {escape(e.recipient)} '
                      f"({escape(e.event_type)})</option>" for e in found)
    appeals = "".join(f'<form method="post" action="/grievances/{escape(t)}/appeal"><input type="hidden" name="csrf" value="{escape(csrf)}">'
                      f'<input name="note" placeholder="why the answer is poor"> <button>Appeal {escape(t)}</button></form>' for t in appealable)
    return ('<section><h2>File a grievance</h2><form method="post" action="/grievances">'
            f'<input type="hidden" name="csrf" value="{escape(csrf)}"><p><label>About <select name="entry">{options}</select></label></p>'
            '<p><label>What is wrong <textarea name="text" rows="3" cols="60" required></textarea></label></p>'
            f'<p><button id="file-grievance">File</button></p></form>{appeals}</section>')
