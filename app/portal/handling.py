"""Grievances in the web: the person files and follows their own cases in the portal; each agency's
handler works them in the console (`/grievances`: a `handler` user `name@agency` sees and moves only
its agency's cases, another agency's is "no such grievance" whether named by URL or form; operator and
oversight users see every agency's); every step is sealed naming the user who made it; anyone reads the
per-agency figures (`/stats` on the portal, no personal data) and Prometheus reads
`backbone_grievances_breached{agency}` and `backbone_grievances_open{agency}` from the portal's `/metrics`.

The aiohttp handlers here are mounted by `app.portal.server` and `app.console.server`; every write
goes through `GrievanceBook.save`, which seals the step in the audit trail first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from html import escape
from typing import Any

from aiohttp import web

from app.portal import grievances as g
from app.portal.grievance_book import Case, GrievanceBook, agency_stats

BOOK = web.AppKey("grievance_book", GrievanceBook)
PROFILE = web.AppKey("grievance_profile", g.Profile)
CLOCK = web.AppKey("grievance_clock", object)  # Callable[[], datetime]
HANDLER_MOVES = (g.ACKNOWLEDGED, g.IN_PROGRESS, g.EXTENDED, g.RESOLVED, g.REFUSED, g.CLOSED)


def now_of(app: web.Application) -> datetime:
    clock: Callable[[], datetime] = app.get(CLOCK) or (lambda: datetime.now(UTC))  # type: ignore[assignment]
    return clock()


async def blocking(function: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)


def case_rows(cases: list[Case], now: datetime, handler_csrf: str | None = None) -> str:
    rows = []
    for case in sorted(cases, key=lambda c: c.grievance.received_at):
        c = case.grievance
        late = g.breached(c, now)
        history = "<br>".join(f"{s.at:%Y-%m-%d %H:%M} {escape(s.state)}{': ' + escape(s.note) if s.note else ''}" for s in c.steps)
        actions = ""
        if handler_csrf is not None and g.MOVES[c.state]:
            options = "".join(f'<option value="{m}">{m}</option>' for m in HANDLER_MOVES if m in g.MOVES[c.state])
            actions = (f'<form method="post" action="/grievances/{escape(c.tracking_id)}"><select name="to">{options}</select> '
                       '<input name="note" placeholder="reason / answer" size="28"> '
                       f'<input type="hidden" name="csrf" value="{escape(handler_csrf)}"><button>Record</button></form>')
        rows.append(f'<tr class="case {escape(c.state)}" data-case="{escape(c.tracking_id)}"><td>{escape(c.tracking_id)}</td>'
                    f"<td>{escape(c.agency)}</td><td>{escape(c.entry)}</td><td>{escape(c.state)}</td>"
                    f'<td class="{"bad" if late else ""}">{c.deadline:%Y-%m-%d %H:%M}{" MISSED" if late else ""}</td>'
                    f"<td>{escape(case.text)}</td><td>{history}</td><td>{actions}</td></tr>")
    if not rows:
        return '<p class="dim">No grievances.</p>'
    return ("<table><tr><th>tracking id</th><th>agency</th><th>about entry</th><th>state</th><th>deadline (UTC)</th>"
            "<th>complaint</th><th>history</th><th></th></tr>" + "".join(rows) + "</table>")


def stats_html(cases: list[Case], now: datetime) -> str:
    rows = "".join(f"<tr><td>{escape(s.agency)}</td><td>{s.received}</td><td>{s.open}</td><td>{s.answered}</td>"
                   f"<td>{'-' if s.median_days_to_answer is None else s.median_days_to_answer}</td>"
                   f'<td class="{"bad" if s.deadlines_missed else ""}">{s.deadlines_missed}</td></tr>' for s in agency_stats(cases, now))
    return ("<section><h1>Grievances per agency</h1><table><tr><th>agency</th><th>received</th><th>open</th><th>answered</th>"
            f"<th>median days to answer</th><th>deadlines missed</th></tr>{rows}</table></section>")


def metrics_text(cases: list[Case], now: datetime) -> str:
    lines = ["# HELP backbone_grievances_breached Grievances answered late or still open after their deadline, per agency.",
             "# TYPE backbone_grievances_breached gauge"]
    stats = agency_stats(cases, now)
    lines += [f'backbone_grievances_breached{{agency="{s.agency}"}} {s.deadlines_missed}' for s in stats]
    lines += ["# HELP backbone_grievances_open Grievances not answered yet, per agency.", "# TYPE backbone_grievances_open gauge"]
    lines += [f'backbone_grievances_open{{agency="{s.agency}"}} {s.open}' for s in stats]
    return "\n".join(lines) + "\n"


# --- the console's handler pages --------------------------------------------------------------------
def held_html(counts: dict[str, int] | None, problem: str | None = None) -> str:
    """Oversight's count of disclosures the people concerned cannot see now (deferred or suppressed notice)."""
    if problem is not None:
        return f'<section id="held"><h2>Held from the people concerned</h2><p class="dim">not counted: {escape(problem)}</p></section>'
    rows = "".join(f"<tr><td>{escape(key)}</td><td>{count}</td></tr>" for key, count in sorted((counts or {}).items()))
    table = f"<table><tr><th>agreement</th><th>decisions held</th></tr>{rows}</table>" if rows else '<p class="dim">None.</p>'
    return f'<section id="held"><h2>Held from the people concerned</h2>{table}</section>'


def console_routes(app: web.Application, book: GrievanceBook, page: Callable[..., str], session_of: Callable[[web.Request], Any],
                   profile: g.Profile | None = None, held: Callable[[], dict[str, int]] | None = None) -> None:
    """Mount `/grievances` (list, with deadlines and breaches; for oversight also `held()`: per
    agreement version, the disclosures their people cannot see yet or ever) and `POST /grievances/{id}`."""
    app[BOOK] = book
    app[PROFILE] = profile or g.profile("gdpr")

    async def close_book(app: web.Application) -> None:
        await blocking(app[BOOK].close)

    app.on_cleanup.append(close_book)

    async def listing(request: web.Request) -> web.Response:
        session = session_of(request)
        every = list((await blocking(request.app[BOOK].cases)).values())
        cases = [case for case in every if _handles(session, case)]
        now = now_of(request.app)
        body = f"<section><h1>Grievances</h1>{case_rows(cases, now, _console_csrf(request))}</section>{stats_html(every, now)}"
        if held is not None and session.role == "oversight":
            try:
                body += held_html(await blocking(held))
            except Exception as exc:  # noqa: BLE001 - the audit database away: said, the cases still shown
                body += held_html(None, type(exc).__name__)
        return web.Response(text=page("Grievances", body, session.user, session.role), content_type="text/html")

    async def step(request: web.Request) -> web.Response:
        session = session_of(request)
        form = await request.post()
        if str(form.get("csrf", "")) != _console_csrf(request):
            raise web.HTTPForbidden(text="the form is out of date: reload the page")
        cases = await blocking(request.app[BOOK].cases)
        case = cases.get(request.match_info["id"])
        if case is None or not _handles(session, case):  # another agency's case: as if there were none
            raise web.HTTPNotFound(text="no such grievance")
        to = str(form.get("to", ""))
        if to not in HANDLER_MOVES:
            raise web.HTTPBadRequest(text=f"a handler records one of {', '.join(HANDLER_MOVES)}")
        try:
            moved = g.move(case.grievance, to, now_of(request.app), session.user, str(form.get("note", "")))
        except g.GrievanceError as exc:
            raise web.HTTPConflict(text=str(exc)) from None
        await blocking(request.app[BOOK].save, Case(moved, case.subject_token, case.text), session.user)
        raise web.HTTPFound("/grievances")

    app.add_routes([web.get("/grievances", listing), web.post("/grievances/{id}", step)])


def _handles(session: Any, case: Case) -> bool:
    """Whether the console user may see and move `case`: a handler its agency's only (`Session.agency`),
    operator and oversight every agency's."""
    agency = getattr(session, "agency", None)
    return session.role != "handler" or (agency is not None and case.grievance.agency == agency)


def _console_csrf(request: web.Request) -> str:
    """The console's sessions carry no CSRF token of their own: one derived from the session cookie
    (SameSite=Strict already keeps other sites' forms out; this keeps a form from another page too)."""
    import hashlib

    from app.console.auth import COOKIE

    return hashlib.sha256(b"grievance-form:" + (request.cookies.get(COOKIE) or "").encode()).hexdigest()[:32]
