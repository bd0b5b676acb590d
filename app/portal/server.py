"""`backbone portal`: the data subject's web application (aiohttp, server-rendered, no script),
served beside the console with the console's headers (CSP, no-store, no referrer, no framing).

A person signs in with a one-time link (`app.portal.links`); the session (`app.portal.sessions`)
carries who they are, and every page and JSON answer is computed from the session's subject only:
no identifier in a URL, form field or JSON parameter selects whose records are shown (entries are
named by event and recipient, and looked up among the session's own). Every POST must carry the
session's CSRF token and, when the browser sends one, this origin.

Pages: `/` (my disclosures, with filters), `/api/disclosures` (the same as JSON), `/receipt/{entry}`
(the entry's receipt, verifiable offline with `backbone audit verify-receipt`), `/proof/{entry}`
(the same checked here), `/consent` (withdraw consent or object per purpose; consent receipts).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from app.console.server import HEADERS
from app.portal import grievances as g
from app.portal import views
from app.portal.consent import consent_receipt
from app.portal.grievance_book import Case, GrievanceBook
from app.portal.handling import BOOK, CLOCK, PROFILE, case_rows, metrics_text, now_of, stats_html
from app.portal.links import SIGN_IN_PATH, LinkDesk, LinkRefused
from app.portal.records import EXPLANATIONS, Entry
from app.portal.sessions import COOKIE, FAILURE_WINDOW_S, PortalSession, PortalSessions
from app.portal.trail import NotYours, PortalTrail
from backbone.events.catalog import Catalog

log = logging.getLogger("backbone.portal")

TRAIL = web.AppKey("trail", PortalTrail)
LINKS = web.AppKey("links", LinkDesk)
SESSIONS = web.AppKey("sessions", PortalSessions)
CATALOG = web.AppKey("catalog", Catalog)
WITHDRAW = web.AppKey("withdraw", object)  # Callable[[str, str], str]: (subject, purpose) -> consent event id
SECURE_COOKIES = web.AppKey("secure_cookies", bool)
SESSION = web.RequestKey("session", PortalSession)
PUBLIC = (SIGN_IN_PATH, "/stats", "/metrics", "/oidc/login", "/oidc/callback")
FILTERS = ("to", "from", "purpose", "outcome", "since")


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html")


@web.middleware
async def _guard(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        if request.path not in PUBLIC:
            session = request.app[SESSIONS].get(request.cookies.get(COOKIE))
            if session is None:
                if request.method == "GET" and not request.path.startswith(("/api/", "/receipt/")):
                    return _with_headers(_html(views.message("Signed out", "Sign in with the link you were given."), 401))
                raise web.HTTPUnauthorized(text="sign in first")
            if request.method == "POST":
                await _check_csrf(request, session)
            request[SESSION] = session
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(HEADERS)
        raise
    return _with_headers(response)


def _with_headers(response: web.StreamResponse) -> web.StreamResponse:
    response.headers.update(HEADERS)
    return response


async def _check_csrf(request: web.Request, session: PortalSession) -> None:
    origin = request.headers.get("Origin")
    # Under Referrer-Policy: no-referrer, Chromium sends `Origin: null` with its own forms: only a
    # named other origin is refused here; the CSRF token and SameSite=Strict do the rest.
    if origin not in (None, "null") and origin != f"{request.scheme}://{request.host}":
        raise web.HTTPForbidden(text="a form from another site")
    sent = str((await request.post()).get("csrf", ""))
    if not session.csrf_matches(sent):
        raise web.HTTPForbidden(text="the form is out of date: reload the page")


def _session(request: web.Request) -> PortalSession:
    return request[SESSION]


async def _blocking(function: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)


async def sign_in_page(request: web.Request) -> web.Response:
    return _html(views.sign_in(request.query.get("t", "")))


async def sign_in(request: web.Request) -> web.Response:
    sessions = request.app[SESSIONS]
    origin = request.headers.get("Origin")
    if origin not in (None, "null") and origin != f"{request.scheme}://{request.host}":
        raise web.HTTPForbidden(text="a sign-in from another site")  # no one is signed in to someone else's records by a form elsewhere
    client = request.remote or ""
    if sessions.locked(client):
        refused = _html(views.message("Too many attempts", "Try again in a minute."), 429)
        refused.headers["Retry-After"] = str(int(FAILURE_WINDOW_S))
        return refused
    token = str((await request.post()).get("t", ""))
    try:
        redeemed = request.app[LINKS].redeem(token)
    except LinkRefused as exc:
        sessions.failed(client)
        log.warning("portal: a sign-in link was refused: %s", exc)
        return _html(views.message("Link refused", str(exc)), 403)
    response = web.HTTPFound("/")
    _set_session_cookie(request, response, sessions.open(redeemed.subject))
    raise response


def _set_session_cookie(request: web.Request, response: web.StreamResponse, token: str) -> None:
    response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=request.secure or request.app[SECURE_COOKIES], path="/")


async def sign_out(request: web.Request) -> web.Response:
    request.app[SESSIONS].close(request.cookies.get(COOKIE))
    response = web.HTTPFound(SIGN_IN_PATH)
    response.del_cookie(COOKIE, path="/")
    raise response


def _filtered(found: list[Entry], query: Any) -> tuple[list[Entry], dict[str, str]]:
    chosen = {name: str(query.get(name, "")).strip() for name in FILTERS if str(query.get(name, "")).strip()}
    since = None
    if "since" in chosen:
        try:
            since = datetime.fromisoformat(chosen["since"]).replace(tzinfo=UTC)
        except ValueError:
            raise web.HTTPBadRequest(text="since: a date as YYYY-MM-DD") from None
    shown = [e for e in found if ("to" not in chosen or e.recipient == chosen["to"])
             and ("from" not in chosen or e.provider == chosen["from"])
             and ("purpose" not in chosen or chosen["purpose"] in e.purposes)
             and ("outcome" not in chosen or e.outcome == chosen["outcome"])
             and (since is None or e.decided_at >= since)]
    return shown, chosen


async def _entries(request: web.Request) -> list[Entry]:
    try:
        return await _blocking(request.app[TRAIL].entries, _session(request).subject)
    except Exception as exc:  # noqa: BLE001 - the audit database away: said, with no id in the log
        log.warning("portal: the audit trail cannot be read: %s", type(exc).__name__)
        raise web.HTTPServiceUnavailable(text=f"your records cannot be read now ({type(exc).__name__}); try again later") from None


def _explanations(catalog: Catalog) -> dict[str, str]:
    return {pid: EXPLANATIONS.get(pid, purpose.label) for pid, purpose in catalog.purposes.items()}


async def disclosures_page(request: web.Request) -> web.Response:
    found = await _entries(request)
    shown, chosen = _filtered(found, request.query)
    return _html(views.disclosures(shown, found, chosen, _explanations(request.app[CATALOG]), _session(request).csrf))


async def disclosures_json(request: web.Request) -> web.Response:
    found = await _entries(request)
    shown, chosen = _filtered(found, request.query)
    explain = _explanations(request.app[CATALOG])
    return web.json_response({"filters": chosen, "count": len(shown), "total": len(found),
                              "entries": [e.to_json(explain) for e in shown]})


async def _receipt(request: web.Request) -> tuple[dict[str, Any], Any]:
    try:
        return await _blocking(request.app[TRAIL].receipt, _session(request).subject, request.match_info["entry"])
    except NotYours:
        raise web.HTTPNotFound(text="no such entry among your records") from None
    except Exception as exc:  # noqa: BLE001 - e.g. the record does not verify: no receipt
        log.warning("portal: no receipt: %s", type(exc).__name__)
        raise web.HTTPConflict(text=f"no receipt: the record does not verify against the signed trail ({type(exc).__name__})") from None


async def receipt(request: web.Request) -> web.Response:
    from backbone.audit.receipts import dumps

    made, _ = await _receipt(request)
    response = web.Response(text=dumps(made) + "\n", content_type="application/json")
    response.headers["Content-Disposition"] = f'attachment; filename="receipt-{made["record"]["event_id"]}.json"'
    return response


async def proof(request: web.Request) -> web.Response:
    from backbone.audit.log import CheckpointCodec
    from backbone.audit.receipts import verify_receipt
    from backbone.events.catalog import AUDIT_CHECKPOINT

    made, sealing = await _receipt(request)
    problems = verify_receipt(made, CheckpointCodec(request.app[CATALOG].internal_schema(AUDIT_CHECKPOINT)))
    if sealing.before_release is False:
        problems.append("the record was sealed after it was released to you: it is not the record of that time")
    return _html(views.proof(request.match_info["entry"], sealing, problems, _session(request).csrf))


def _consent_purposes(found: list[Entry], catalog: Catalog) -> list[tuple[str, str, str]]:
    used = sorted({p for e in found for p in e.purposes} | {p for p in catalog.purposes if p == "personalised_service"})
    return [(p, catalog.purposes[p].label if p in catalog.purposes else p, EXPLANATIONS.get(p, p)) for p in used]


async def consent_page(request: web.Request) -> web.Response:
    session = _session(request)
    found = await _entries(request)
    return _html(views.consent_page(_consent_purposes(found, request.app[CATALOG]), session.receipts, session.csrf))


async def consent_withdraw(request: web.Request) -> web.Response:
    session = _session(request)
    form = await request.post()
    purpose, kind = str(form.get("purpose", "")), str(form.get("kind", "withdrawn"))
    catalog = request.app[CATALOG]
    if purpose not in catalog.purposes or kind not in ("withdrawn", "objected"):
        raise web.HTTPBadRequest(text="choose one of the purposes shown")
    try:
        event_id = await _blocking(request.app[WITHDRAW], session.subject, purpose)
    except Exception as exc:  # noqa: BLE001 - the broker away: nothing recorded, said so
        log.warning("portal: a consent withdrawal could not be recorded: %s", type(exc).__name__)
        raise web.HTTPServiceUnavailable(text="your withdrawal could not be recorded now; nothing changed; try again") from None
    trail = request.app[TRAIL]
    found = await _entries(request)
    controllers = sorted({e.recipient for e in found if purpose in e.purposes})
    made = consent_receipt(subject_token=trail.tokens(session.subject)[0], purpose=purpose, catalog=catalog, status=kind,
                           event_id=event_id, controllers=controllers)
    session.receipts.append(made)
    log.info("portal: consent %s for purpose %s recorded (event %s)", kind, purpose, event_id)
    done = f"Recorded: consent {kind} for {purpose}. Agencies stop receiving your records for it from the next one."
    return _html(views.consent_page(_consent_purposes(found, catalog), session.receipts, session.csrf, done))


async def consent_receipt_file(request: web.Request) -> web.Response:
    receipts = _session(request).receipts
    try:
        made = receipts[int(request.match_info["n"])]
    except (ValueError, IndexError):
        raise web.HTTPNotFound(text="no such consent receipt in this session") from None
    response = web.Response(text=json.dumps(made, indent=2) + "\n", content_type="application/json")
    response.headers["Content-Disposition"] = f'attachment; filename="consent-receipt-{made["record_id"]}.json"'
    return response


async def my_grievances(request: web.Request) -> web.Response:
    session = _session(request)
    tokens = set(await _blocking(request.app[TRAIL].tokens, session.subject))
    cases = [c for c in (await _blocking(request.app[BOOK].cases)).values() if c.subject_token in tokens]
    found = await _entries(request)
    body = (f"<section><h1>My grievances</h1>{case_rows(cases, now_of(request.app))}</section>"
            + views.grievance_form(found, session.csrf, [c.grievance.tracking_id for c in cases
                                                         if c.grievance.state in (g.RESOLVED, g.REFUSED)]))
    return _html(views.page("My grievances", body, session.csrf))


async def file_grievance(request: web.Request) -> web.Response:
    """A complaint about one of the person's own entries: received now, due per the portal's profile."""
    session = _session(request)
    form = await request.post()
    entry_id, text = str(form.get("entry", "")), str(form.get("text", "")).strip()[:2000]
    entry = next((e for e in await _entries(request) if e.entry_id == entry_id), None)
    if entry is None or not text:
        raise web.HTTPBadRequest(text="choose one of your entries and say what is wrong")
    token = (await _blocking(request.app[TRAIL].tokens, session.subject))[0]
    case = Case(g.file(entry.provider, entry_id, now_of(request.app), request.app[PROFILE]), token, text)
    await _blocking(request.app[BOOK].save, case, "portal")
    return _html(views.message("Grievance received", f"Your tracking id is {case.grievance.tracking_id}. The agency answers by "
                               f"{case.grievance.deadline:%Y-%m-%d} (UTC).", session.csrf))


async def appeal(request: web.Request) -> web.Response:
    session = _session(request)
    tokens = set(await _blocking(request.app[TRAIL].tokens, session.subject))
    case = (await _blocking(request.app[BOOK].cases)).get(request.match_info["id"])
    if case is None or case.subject_token not in tokens:
        raise web.HTTPNotFound(text="no such grievance of yours")
    try:
        moved = g.move(case.grievance, g.APPEALED, now_of(request.app), "subject", str((await request.post()).get("note", "")))
    except g.GrievanceError as exc:
        raise web.HTTPConflict(text=str(exc)) from None
    await _blocking(request.app[BOOK].save, Case(moved, case.subject_token, case.text), "portal")
    raise web.HTTPFound("/grievances")


async def public_stats(request: web.Request) -> web.Response:
    cases = list((await _blocking(request.app[BOOK].cases)).values())
    return _html(views.page("Grievances per agency", stats_html(cases, now_of(request.app))))


async def metrics(request: web.Request) -> web.Response:
    cases = list((await _blocking(request.app[BOOK].cases)).values())
    return web.Response(text=metrics_text(cases, now_of(request.app)), content_type="text/plain")


async def _close_book(app: web.Application) -> None:
    await _blocking(app[BOOK].close)


def make_app(trail: PortalTrail, links: LinkDesk, catalog: Catalog, withdraw: Callable[[str, str], str],
             secure_cookies: bool = False, sessions: PortalSessions | None = None,
             book: GrievanceBook | None = None, profile: g.Profile | None = None,
             clock: Callable[[], datetime] | None = None, oidc: Any = None) -> web.Application:
    """The portal; `oidc` (an `app.portal.oidc.OidcClient`) adds sign-in with OpenID Connect beside the links."""
    app = web.Application(middlewares=[_guard])
    if book is not None:
        app[BOOK], app[PROFILE] = book, profile or g.profile("gdpr")
        app.on_cleanup.append(_close_book)
        if clock is not None:
            app[CLOCK] = clock
        app.add_routes([web.get("/grievances", my_grievances), web.post("/grievances", file_grievance),
                        web.post("/grievances/{id}/appeal", appeal), web.get("/stats", public_stats), web.get("/metrics", metrics)])
    app[TRAIL], app[LINKS], app[CATALOG], app[WITHDRAW] = trail, links, catalog, withdraw
    app[SESSIONS] = sessions or PortalSessions()
    app[SECURE_COOKIES] = secure_cookies
    if oidc is not None:
        from app.portal.oidc import routes as oidc_routes

        app.add_routes(oidc_routes(oidc, app[SESSIONS].open, _set_session_cookie))
    app.add_routes([
        web.get(SIGN_IN_PATH, sign_in_page), web.post(SIGN_IN_PATH, sign_in), web.post("/logout", sign_out),
        web.get("/", disclosures_page), web.get("/api/disclosures", disclosures_json),
        web.get("/receipt/{entry}", receipt), web.get("/proof/{entry}", proof),
        web.get("/consent", consent_page), web.post("/consent/withdraw", consent_withdraw),
        web.get("/consent/receipts/{n}", consent_receipt_file),
    ])
    return app


def app_for(settings: Any, oversight: Any = None, public_url: str | None = None, profile: g.Profile | None = None,
            oidc: Any = None) -> web.Application:
    """The portal of the configured stack: the charter as the processors know it (re-read every
    `CHARTER_REFRESH_S`), the keyring holding the oversight domain (`oversight`: that role's
    settings when the portal runs as another role)."""
    from app.portal.consent import withdraw
    from backbone.control.erasure import oversight_tokens
    from backbone.errors import BackboneError
    from backbone.events.catalog import load_catalog
    from backbone.keys.keyring import Keyring

    catalog = load_catalog(settings.schemas_dir)
    keyring = Keyring.open(oversight or settings)
    try:
        oversight_tokens(keyring, "0")  # the trail names people by the oversight domain: without its key nobody is found
    except Exception as exc:  # noqa: BLE001 - whichever way the keyring says it lacks the domain
        raise BackboneError("the portal needs the oversight domain's key (the audit trail names people by it): run it with "
                            f"BACKBONE_ROLE=oversight or a keyring holding that domain ({type(exc).__name__})") from None
    trail = PortalTrail(settings, CachedCharter(settings), keyring)
    return make_app(trail, LinkDesk.for_data_dir(settings.data_dir), catalog,
                    lambda subject, purpose: withdraw(settings, catalog, subject, purpose),
                    secure_cookies=(public_url or "").lower().startswith("https://"), book=GrievanceBook(settings), profile=profile, oidc=oidc)


CHARTER_REFRESH_S = 30.0


class CachedCharter:
    """The agreement files and every version published on `agreements.changes` (the files alone
    when Kafka does not answer), read at most every `CHARTER_REFRESH_S`."""

    def __init__(self, settings: Any) -> None:
        self._settings = settings
        self._charter: Any = None
        self._read_at = 0.0

    def __call__(self) -> Any:
        import time

        from backbone.control import agreement_changes
        from backbone.errors import BackboneError
        from backbone.events.catalog import load_catalog
        from backbone.policy.agreements import Charter, load_agreements

        if self._charter is not None and time.monotonic() - self._read_at < CHARTER_REFRESH_S:
            return self._charter
        charter = load_agreements(self._settings.agreements_dir, load_catalog(self._settings.schemas_dir))
        try:
            versions, _ = agreement_changes.published(self._settings, charter, timeout=5.0)
            charter = Charter(charter.catalog, tuple(versions.values()), charter.sources)
        except BackboneError:
            pass
        self._charter, self._read_at = charter, time.monotonic()
        return charter


async def start(settings: Any, host: str, port: int, oversight: Any = None, public_url: str | None = None,
                profile: g.Profile | None = None, oidc: Any = None) -> tuple[web.AppRunner, str]:
    """Serve the portal in the running loop; returns the runner (cleanup to stop) and its URL."""
    from app.serving import bind

    return await bind(app_for(settings, oversight, public_url, profile, oidc), host, port, "portal", "choose another --port", 3.0)
