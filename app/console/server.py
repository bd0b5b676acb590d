"""`backbone console`: the operator's web view (aiohttp, server-rendered, live by server-sent events).

Pages: `/` (flows between agencies, DLQ, lag, rows, registry subjects, unreachable parts; its live
part is replaced by each `status` event of `/events`), `/charter` (agreements with status, purposes
and field treatments), `/quality` (the providers' scorecards, `app.console.quality`), `/subject` (oversight only: every disclosure
about one person), `/grievances`
(`app.portal.handling`; an agency's `handler` user reaches this page only). Every page needs a login
(`app.console.auth`); the console binds 127.0.0.1 unless `BACKBONE_CONSOLE_HOST` says otherwise. Stopping does not wait on open event streams: they end when the console shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from app.console import views
from app.console.auth import COOKIE, FAILURE_WINDOW_S, HANDLER, OVERSIGHT, Logins, Refusal, Session
from app.console.snapshot import Snapshot, SnapshotCache, collect_snapshot
from backbone.settings import Settings

log = logging.getLogger("backbone.console")

LOGINS = web.AppKey("logins", Logins)
SNAPSHOTS = web.AppKey("snapshots", SnapshotCache)
LOOKUP = web.AppKey("lookup", object)  # Callable[[str], tuple[str, list[Disclosure]]]
STREAM_INTERVAL = web.AppKey("stream_interval", float)
SECURE_COOKIES = web.AppKey("secure_cookies", bool)
CLOSING = web.AppKey("closing", asyncio.Event)  # set when the console shuts down: event streams end
# How long stopping waits for requests in progress (a page being rendered) before cancelling them.
SHUTDOWN_TIMEOUT_S = 3.0
SESSION = web.RequestKey("session", Session)
PUBLIC = ("/login", "/static/live.js")
HANDLER_PATHS = ("/grievances", "/logout")  # an agency's handler reaches these (and /grievances/...) only
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; img-src 'self'; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html")


@web.middleware
async def _guard(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    if request.path not in PUBLIC:
        session = request.app[LOGINS].session(request.cookies.get(COOKIE))
        if session is None:
            if request.method == "GET" and request.path != "/events":
                raise web.HTTPFound("/login")
            raise web.HTTPUnauthorized(text="log in first")
        request[SESSION] = session
        if session.role == HANDLER and not any(request.path == p or request.path.startswith(p + "/") for p in HANDLER_PATHS):
            if request.method == "GET" and request.path == "/":
                raise web.HTTPFound("/grievances")
            raise web.HTTPForbidden(text="an agency's handler works its grievances only (/grievances)")
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # redirects and refusals carry the same headers as pages
        exc.headers.update(HEADERS)
        raise
    response.headers.update(HEADERS)
    return response


def _session(request: web.Request) -> Session:
    return request[SESSION]


async def login_page(request: web.Request) -> web.Response:
    return _html(views.login_form())


async def log_in(request: web.Request) -> web.Response:
    form = await request.post()
    outcome = await request.app[LOGINS].attempt(str(form.get("user", "")), str(form.get("password", "")))
    if outcome is Refusal.LOCKED:
        log.warning("console: refused a login as %r unchecked: too many attempts", str(form.get("user", ""))[:64])
        locked = _html(views.login_form("Too many attempts: try again in a minute."), 429)
        locked.headers["Retry-After"] = str(int(FAILURE_WINDOW_S))
        return locked
    if not isinstance(outcome, str):
        log.warning("console: refused a login as %r", str(form.get("user", ""))[:64])
        return _html(views.login_form("Wrong user or password."), 401)
    response = web.HTTPFound("/")
    # Secure also when TLS ends at a proxy in front (BACKBONE_CONSOLE_PUBLIC_URL=https://...)
    secure = request.secure or request.app[SECURE_COOKIES]
    response.set_cookie(COOKIE, outcome, httponly=True, samesite="Strict", secure=secure, path="/")
    raise response


async def log_out(request: web.Request) -> web.Response:
    request.app[LOGINS].log_out(request.cookies.get(COOKIE))
    response = web.HTTPFound("/login")
    response.del_cookie(COOKIE, path="/")
    raise response


async def overview(request: web.Request) -> web.Response:
    session = _session(request)
    return _html(views.overview(await request.app[SNAPSHOTS].get(), session.user, session.role))


async def charter(request: web.Request) -> web.Response:
    session = _session(request)
    return _html(views.charter(await request.app[SNAPSHOTS].get(), session.user, session.role))


async def catalog_entry(request: web.Request) -> web.Response:
    """One lineage or catalogue entry of the charter the console shows (`app.catalog.entry`)."""
    from app.catalog import entry
    from backbone.settings import get_settings

    snapshot = await request.app[SNAPSHOTS].get()
    if snapshot.charter is None:
        return _html(views.page("Catalogue", '<p class="bad">The charter is not loaded.</p>'), status=503)
    kind, name = request.match_info["kind"], request.match_info["name"]
    try:
        content_type, text = await asyncio.get_running_loop().run_in_executor(None, entry, snapshot.charter, get_settings(), kind, name)
    except KeyError:
        return _html(views.page("Catalogue", f'<p class="bad">No {views.escape(kind)} entry {views.escape(name)}.</p>'), status=404)
    return web.Response(text=text, content_type=content_type, charset="utf-8")


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the overview's live part as one `status` event every few seconds."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
    response.headers.update(HEADERS)
    await response.prepare(request)
    interval, closing = request.app[STREAM_INTERVAL], request.app[CLOSING]
    try:
        while not closing.is_set():
            snapshot = await _unless_closing(closing, request.app[SNAPSHOTS].get())
            if snapshot is None:
                break
            fragment = views.live(snapshot)
            data = "".join(f"data: {line}\n" for line in fragment.splitlines() or [""])
            await response.write(f"event: status\n{data}\n".encode())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closing.wait(), interval)
    except ConnectionResetError:  # aiohttp's ClientConnectionResetError too: the browser went away
        log.debug("console: an event stream's client went away")
    return response


async def _unless_closing(closing: asyncio.Event, pending: Awaitable[Snapshot]) -> Snapshot | None:
    """What `pending` gives, or None (and it is cancelled) as soon as the console shuts down."""
    task = asyncio.ensure_future(pending)
    waiter = asyncio.ensure_future(closing.wait())
    try:
        await asyncio.wait((task, waiter), return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
    return task.result() if task.done() and not task.cancelled() else None


async def _close_streams(app: web.Application) -> None:
    app[CLOSING].set()


def _oversight(request: web.Request) -> Session:
    session = _session(request)
    if session.role != OVERSIGHT:
        refusal = '<section class="unreachable"><h1 class="bad">Refused</h1><p>only oversight sees disclosures about a person</p></section>'
        raise web.HTTPForbidden(text=views.page("Refused", refusal, session.user, session.role), content_type="text/html")
    return session


async def subject_page(request: web.Request) -> web.Response:
    session = _oversight(request)
    return _html(views.subject_form(session.user, session.role))


async def subject_lookup(request: web.Request) -> web.Response:
    """POST, so the national id never lands in a URL, a log line or the browser's history."""
    session = _oversight(request)
    national_id = str((await request.post()).get("national_id", "")).strip()
    if not national_id:
        return _html(views.subject_form(session.user, session.role, problem="Give a national id."), 400)
    lookup: Any = request.app[LOOKUP]
    try:
        token, found, verdict = await asyncio.get_running_loop().run_in_executor(None, lookup, national_id)
    except Exception as exc:  # noqa: BLE001 - the audit database or keyring away: said on the page, no id in the log
        log.warning("console: subject lookup failed: %s", type(exc).__name__)
        return _html(views.subject_form(session.user, session.role, problem=f"The audit trail cannot be read now ({type(exc).__name__})."), 503)
    log.info("console: %s looked up the disclosures about subject %s", session.user, token)
    return _html(views.subject_form(session.user, session.role, found, token, verdict=verdict))


async def live_js(request: web.Request) -> web.Response:
    return web.Response(text=views.LIVE_JS, content_type="application/javascript")


Lookup = Callable[[str], tuple[str, list, tuple[bool | None, str]]]


def disclosures_lookup(settings: Settings, oversight: Settings | None = None) -> Lookup:
    """The oversight lookup `backbone audit subject` does: the id's oversight pseudonym, its
    disclosures, and whether their audit records verify against the signed checkpoints. The
    pseudonym needs the oversight domain: `oversight` names the oversight role's keyring when the
    console runs as another role (the demo's console is the operator's)."""

    def lookup(national_id: str) -> tuple[str, list, tuple[bool | None, str]]:
        from app.console.snapshot import load_charter
        from backbone.audit.log import public_key_map
        from backbone.audit.published import verifier_keys
        from backbone.clickhouse.client import make_client
        from backbone.keys.keyring import Keyring
        from consumers.audit import disclosures, subject_token
        from consumers.audit_trail import verdict_text, verify_subject

        keyring = Keyring.open(oversight or settings)
        token = subject_token(keyring, national_id)
        charter = load_charter(settings)
        client = make_client(settings.clickhouse_dsn or "", read_only=True)
        try:
            found = disclosures(client, settings.clickhouse_database_prefix, token, charter)
            verdict = verdict_text(*verify_subject(client, settings.clickhouse_database_prefix, charter.catalog,
                                                   public_key_map(verifier_keys(settings)), token))
            return token, found, verdict
        finally:
            client.close()

    return lookup


def make_app(logins: Logins, snapshot: Callable[[], Snapshot], lookup: Lookup,
             refresh_s: float = 5.0, secure_cookies: bool = False, grievances: Any = None, held: Any = None,
             quality: Any = None) -> web.Application:
    """The console; `snapshot` is the blocking read of the stack, shared and refreshed every `refresh_s`;
    `secure_cookies` when browsers reach it over https, even if TLS ends before this process."""
    app = web.Application(middlewares=[_guard])
    app[LOGINS] = logins
    app[SNAPSHOTS] = SnapshotCache(snapshot, refresh_s)
    app[LOOKUP] = lookup
    app[STREAM_INTERVAL] = refresh_s
    app[SECURE_COOKIES] = secure_cookies
    app[CLOSING] = asyncio.Event()
    app.on_shutdown.append(_close_streams)
    app.add_routes([
        web.get("/login", login_page), web.post("/login", log_in), web.post("/logout", log_out),
        web.get("/", overview), web.get("/charter", charter), web.get("/events", events),
        web.get("/subject", subject_page), web.post("/subject", subject_lookup), web.get("/static/live.js", live_js),
        web.get("/catalog/{kind}/{name}", catalog_entry),
    ])
    if grievances is not None:  # the agencies' handlers work the citizens' grievances here (app.portal.handling)
        from app.portal.handling import console_routes

        console_routes(app, grievances, views.page, _session, held=held)
    if quality is not None:  # the providers' data-quality scorecards (app.console.quality)
        from app.console.quality import quality_routes

        quality_routes(app, quality, views.page, _session)
    return app


def app_for(settings: Settings, minutes: int = 5, oversight: Settings | None = None) -> web.Application:
    from app.console.quality import scorecard_reader
    from app.portal.grievance_book import GrievanceBook
    from app.portal.server import CachedCharter
    from app.portal.trail import PortalTrail

    return make_app(Logins.from_settings(settings), lambda: collect_snapshot(settings, minutes), disclosures_lookup(settings, oversight),
                    secure_cookies=settings.console_over_https, grievances=GrievanceBook(settings),
                    held=PortalTrail(settings, CachedCharter(settings), None).held_counts, quality=scorecard_reader(settings))


async def start(settings: Settings, host: str | None = None, port: int | None = None,
                oversight: Settings | None = None) -> tuple[web.AppRunner, str]:
    """Serve the console in the running loop; returns the runner (cleanup to stop) and its URL."""
    from app.serving import bind

    return await bind(app_for(settings, oversight=oversight), host or settings.console_host,
                      settings.console_port if port is None else port, "console", "set BACKBONE_CONSOLE_PORT", SHUTDOWN_TIMEOUT_S)
