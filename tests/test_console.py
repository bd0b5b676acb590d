"""The web console as a browser meets it (aiohttp's test client): a login is required, a wrong
password is refused, guessing is throttled (also in parallel, also for unknown names), the session
cookie is Secure behind an https proxy, the operator may not open the oversight page, the pages show
the demo charter's agencies and flows, the event stream sends live updates, and stopping the console
does not wait on open streams nor log a client going away as an error."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import re
import signal
import subprocess
import tracemalloc
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest
from aiohttp.test_utils import TestClient, TestServer

from app.console.auth import COOKIE, MAX_FAILURES, Logins, Refusal
from app.console.server import make_app
from app.console.snapshot import Flow, Snapshot, load_charter
from app.status import GroupLag, Status
from backbone.settings import load_settings
from consumers.audit import Disclosure
from tests.cli import CLI, clean_env

PASSWORDS = {"operator": "operator-secret-1", "oversight": "oversight-secret-1"}


@pytest.fixture(scope="module")
def logins() -> Logins:
    return Logins(PASSWORDS)


@pytest.fixture(scope="module")
def snapshot() -> Snapshot:
    status = Status(decisions=[("fraud", "deny: consent_withdrawn", 7), ("fraud", "permit", 600)], groups=[GroupLag("backbone-processor-dataplane", 5, 1200, 34)], subjects=["raw.tax.income_declared-value"],
                    dlq=Counter({"processor: bad_magic_byte": 2}), unreachable={"clickhouse": "ClickHouse at http://ch:8123 did not answer"},
                    agreement_changes=[("tax-to-fraud@2", "suspended", "2026-03-15 12:00:00", "alice")])
    flows = [Flow("tax", "fraud", "permit", 600), Flow("tax", "fraud", "consent_withdrawn", 7), Flow("welfare", "research", "permit", 30)]
    return Snapshot(status, load_charter(load_settings()), flows, window_s=300)


def lookup(national_id: str) -> tuple[str, list[Disclosure], tuple[bool | None, str]]:
    at = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)
    return "tok123", [Disclosure(at, "fraud", "tax.income_declared", "tax-to-fraud", 2, ("fraud_prevention_and_detection",),
                                 ("national_id", "income"), "e1", "e2")], (True, "verified: the records shown are sealed")


def run(logins: Logins, snapshot: Snapshot, test: Callable[[TestClient], Awaitable[None]]) -> None:
    async def go() -> None:
        async with TestClient(TestServer(make_app(logins, lambda: snapshot, lookup, refresh_s=0.05))) as client:
            await test(client)

    asyncio.run(go())


async def log_in(client: TestClient, user: str, password: str | None = None) -> int:
    answer = await client.post("/login", data={"user": user, "password": password or PASSWORDS[user]}, allow_redirects=False)
    return answer.status


def test_every_page_needs_a_login(logins: Logins, snapshot: Snapshot) -> None:
    async def test(client: TestClient) -> None:
        for path in ("/", "/charter", "/subject"):
            answer = await client.get(path, allow_redirects=False)
            assert answer.status == 302 and answer.headers["Location"] == "/login"
        assert (await client.get("/events")).status == 401
        assert (await client.post("/subject", data={"national_id": "1"})).status == 401

    run(logins, snapshot, test)


def test_a_wrong_password_is_refused(logins: Logins, snapshot: Snapshot) -> None:
    async def test(client: TestClient) -> None:
        assert await log_in(client, "operator", "not-the-password") == 401
        assert await log_in(client, "nobody", "operator-secret-1") == 401
        assert (await client.get("/", allow_redirects=False)).status == 302

    run(logins, snapshot, test)


def test_the_operator_is_refused_the_oversight_page(logins: Logins, snapshot: Snapshot) -> None:
    async def test(client: TestClient) -> None:
        assert await log_in(client, "operator") == 302
        refused = await client.get("/subject")
        assert refused.status == 403
        # a page of the console (the user, the navigation), with the same security headers as any page
        assert "only oversight sees disclosures about a person" in await refused.text() and "operator" in await refused.text()
        assert refused.headers["Content-Security-Policy"].startswith("default-src 'none'")
        assert (await client.post("/subject", data={"national_id": "123456782"})).status == 403
        missing = await client.get("/no-such-page", allow_redirects=False)
        assert missing.status == 404 and "Content-Security-Policy" in missing.headers

    run(logins, snapshot, test)


def test_oversight_sees_every_disclosure_about_a_subject(logins: Logins, snapshot: Snapshot) -> None:
    async def test(client: TestClient) -> None:
        assert await log_in(client, "oversight") == 302
        page = await (await client.post("/subject", data={"national_id": "123456782"})).text()
        assert "1 disclosures about subject tok123" in page and "tax-to-fraud@2" in page and "123456782" not in page
        assert "verified: the records shown are sealed" in page

    run(logins, snapshot, test)


def test_the_pages_show_the_demo_charters_agencies_flows_and_unreachable_parts(logins: Logins, snapshot: Snapshot) -> None:
    async def test(client: TestClient) -> None:
        assert await log_in(client, "operator") == 302
        answer = await client.get("/")
        assert answer.status == 200 and "script-src 'self'" in answer.headers["Content-Security-Policy"]
        page = await answer.text()
        for agency in {a.provider for a in snapshot.charter.agreements} | {a.recipient for a in snapshot.charter.agreements}:  # type: ignore[union-attr]
            assert f">{agency}</text>" in page
        assert "<svg" in page and "2.0/s" in page and "consent_withdrawn 7" in page
        assert "Unreachable" in page and "ClickHouse at http://ch:8123 did not answer" in page
        assert "deny: consent_withdrawn" in page and ">600<" in page
        assert "bad_magic_byte" in page and "backbone-processor-dataplane" in page and "raw.tax.income_declared-value" in page
        charter = await (await client.get("/charter")).text()
        assert 'class="badge suspended">suspended' in charter and "tax-to-fraud@2" in charter and "pseudonymise" in charter
        # version 1 of tax-to-fraud is active but its validity ended: not in force, and the page says so
        assert re.search(r"<td>tax-to-fraud@1</td><td><span class=\"badge expired\">expired</span></td><td>\d{4}-\d\d-\d\d – 2025-01-01</td>", charter)

    run(logins, snapshot, test)


def test_the_overview_says_whether_the_audit_trail_verifies_and_names_failures(snapshot: Snapshot) -> None:
    from dataclasses import replace

    from app.console import views
    from app.console.snapshot import AuditState

    unchecked = views.live(snapshot)  # ClickHouse unreachable in this snapshot: nothing verified, and why
    assert "Not verified: ClickHouse at http://ch:8123 did not answer" in unchecked
    good = views.live(replace(snapshot, audit=AuditState(True, 12, 3400, 2, (), 0.0)))
    assert "Verified: 12 checkpoints, 3,400 decisions, 2 operator actions" in good
    failing = AuditState(False, 11, 3000, 2, ("writer operations checkpoint 1: edited record: a record differs",), 0.0)
    bad = views.live(replace(snapshot, audit=failing))
    assert "Audit trail NOT verified" in bad and "writer operations checkpoint 1: edited record" in bad and "Verified:" not in bad


def test_the_event_stream_sends_live_updates(logins: Logins, snapshot: Snapshot) -> None:
    async def test(client: TestClient) -> None:
        assert await log_in(client, "operator") == 302
        answer = await client.get("/events")
        assert answer.headers["Content-Type"].startswith("text/event-stream")
        seen = b""
        while seen.count(b"event: status") < 2:
            seen += await asyncio.wait_for(answer.content.readany(), 5)
        assert b"data: " in seen and b"<svg" in seen
        answer.close()

    run(logins, snapshot, test)


def test_the_console_refuses_to_start_without_a_password() -> None:
    from backbone.errors import SettingsError

    with pytest.raises(SettingsError, match="BACKBONE_CONSOLE_OPERATOR_PASSWORD"):
        Logins.from_settings(load_settings(console_operator_password=None, console_oversight_password=None))


def test_the_demo_starts_the_console_with_made_up_passwords_and_stops_it_with_a_stream_open(tmp_path, capsys, caplog) -> None:  # noqa: ANN001
    """As `demo --keep-running` with a browser on the overview: stopping does not wait on its event stream."""
    from types import SimpleNamespace
    from urllib.parse import urlencode, urlsplit

    from app.cli.demo import _start_console

    settings = load_settings(data_dir=tmp_path, console_port=0, kafka_bootstrap="127.0.0.1:1", kafka_timeout_s=1)
    stop = _start_console(SimpleNamespace(base=settings, settings=settings))
    assert stop is not None
    shown = capsys.readouterr().out
    assert "console: http://127.0.0.1:" in shown and "user oversight, password " in shown
    url = urlsplit(re.search(r"console: (\S+)", shown).group(1))  # type: ignore[union-attr]
    password = re.search(r"user operator, password (\S+)", shown).group(1)  # type: ignore[union-attr]

    login = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    login.request("POST", "/login", urlencode({"user": "operator", "password": password}),
                  {"Content-Type": "application/x-www-form-urlencoded"})
    answer = login.getresponse()
    assert answer.status == 302
    cookie = answer.getheader("Set-Cookie").split(";")[0]
    stream = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    stream.request("GET", "/events", headers={"Cookie": cookie})
    events = stream.getresponse()
    seen = b""
    while b"event: status" not in seen:
        seen += events.read1(65536)
    with caplog.at_level(logging.DEBUG):
        stop()  # with the stream open
    assert "did not stop in time" not in capsys.readouterr().out
    assert events.read() is not None  # the stream ended (no hang on reading what is left)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    stream.close()
    login.close()


def test_repeated_wrong_passwords_lock_the_user_out_for_a_while() -> None:
    from app.console.auth import MAX_FAILURES

    logins = Logins({"operator": "operator-secret-1"})

    async def attempts() -> tuple[list[str | None], str | None]:
        wrong = [await logins.log_in("operator", f"guess-{n}") for n in range(MAX_FAILURES)]
        return wrong, await logins.log_in("operator", "operator-secret-1")

    wrong, right = asyncio.run(attempts())
    assert wrong == [None] * MAX_FAILURES and right is None


def test_a_burst_of_concurrent_guesses_gets_no_more_checks_than_the_allowance(snapshot: Snapshot) -> None:
    """The attack: many wrong passwords and the right one sent at once. Each attempt takes its place
    before the slow hash, so only MAX_FAILURES are checked, the rest are refused unchecked (429),
    and the right password, sent while the burst is in flight, is refused as the user is locked."""
    logins = Logins({"operator": PASSWORDS["operator"]})  # a window of its own

    async def test(client: TestClient) -> None:
        locked = asyncio.Event()

        async def guess(password: str) -> int:
            status = await log_in(client, "operator", password)
            if status == 429:
                locked.set()
            return status

        burst = asyncio.gather(*(guess(f"guess-{n}") for n in range(8 * MAX_FAILURES)))
        # the right one once the server has said "locked" to one guess (or the burst is over)
        await asyncio.wait([asyncio.ensure_future(locked.wait()), burst], return_when=asyncio.FIRST_COMPLETED)
        right = await guess(PASSWORDS["operator"])
        wrong = await burst
        assert wrong.count(401) <= MAX_FAILURES and wrong.count(429) >= 7 * MAX_FAILURES, wrong
        assert right == 429
        assert await log_in(client, "operator") == 429  # still locked after the burst
        answer = await client.post("/login", data={"user": "operator", "password": PASSWORDS["operator"]}, allow_redirects=False)
        assert "Too many attempts" in await answer.text() and int(answer.headers["Retry-After"]) > 0

    run(logins, snapshot, test)


def test_unknown_user_names_are_throttled_and_thousands_of_them_do_not_grow_memory() -> None:
    import app.console.auth as auth

    logins = Logins({"operator": PASSWORDS["operator"]})

    async def attempts(names: range) -> list[object]:
        return [await logins.attempt(f"nobody-{n}", "operator-secret-1") for n in names]

    def held() -> int:  # bytes allocated by the console's login code and still held
        return sum(stat.size for stat in tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(True, auth.__file__)]).statistics("filename"))

    tracemalloc.start()
    try:
        first = asyncio.run(attempts(range(100)))
        before = held()
        asyncio.run(attempts(range(100, 5100)))
        after = held()
    finally:
        tracemalloc.stop()
    assert first[:MAX_FAILURES] == [Refusal.WRONG] * MAX_FAILURES and set(first[MAX_FAILURES:]) == {Refusal.LOCKED}
    assert after - before < 4096, f"{after - before} more bytes held after 5,000 more unknown names"
    # the users' own windows are theirs: guessing other names does not lock the operator out
    assert isinstance(asyncio.run(logins.attempt("operator", PASSWORDS["operator"])), str)


@pytest.mark.parametrize(("public_url", "secure"), [("https://console.agency.example", True), ("http://127.0.0.1:8090", False), (None, False)])
def test_the_session_cookie_is_secure_when_the_console_is_reached_over_https(
        public_url: str | None, secure: bool, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """Behind a TLS-terminating proxy the console itself sees http; BACKBONE_CONSOLE_PUBLIC_URL says https."""
    from app.console.server import app_for

    if public_url:
        monkeypatch.setenv("BACKBONE_CONSOLE_PUBLIC_URL", public_url)
    else:
        monkeypatch.delenv("BACKBONE_CONSOLE_PUBLIC_URL", raising=False)
    settings = load_settings(data_dir=tmp_path, console_operator_password=PASSWORDS["operator"])

    async def go() -> None:
        async with TestClient(TestServer(app_for(settings))) as client:
            answer = await client.post("/login", data={"user": "operator", "password": PASSWORDS["operator"]}, allow_redirects=False)
            assert answer.status == 302
            cookie = answer.cookies[COOKIE]
            assert bool(cookie["secure"]) is secure and cookie["httponly"] and cookie["samesite"] == "Strict"

    asyncio.run(go())


def test_a_console_url_that_is_not_http_is_refused_saying_what_is_expected() -> None:
    from backbone.errors import SettingsError

    with pytest.raises(SettingsError, match="BACKBONE_CONSOLE_PUBLIC_URL.*https://"):
        load_settings(console_public_url="console.agency.example")


def test_a_client_leaving_the_event_stream_is_not_an_error(logins: Logins, snapshot: Snapshot, caplog: pytest.LogCaptureFixture) -> None:
    async def test(client: TestClient) -> None:
        assert await log_in(client, "operator") == 302
        answer = await client.get("/events")
        assert b"event: status" in await asyncio.wait_for(answer.content.readuntil(b"\n\n"), 10)
        answer.connection.transport.abort()  # the browser tab closed  # type: ignore[union-attr]
        await asyncio.sleep(0.5)  # the stream writes every 0.05 s: it meets the closed connection

    with caplog.at_level(logging.DEBUG):
        run(logins, snapshot, test)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_stopping_the_console_does_not_wait_on_an_open_event_stream(tmp_path) -> None:  # noqa: ANN001
    """`backbone console` with a browser's event stream open, then SIGTERM: it exits (aiohttp would
    otherwise wait 60 s for the stream) and logs nothing at ERROR."""
    import aiohttp

    env = clean_env({"BACKBONE_DATA_DIR": str(tmp_path), "BACKBONE_CONSOLE_PORT": "0", "BACKBONE_KAFKA_BOOTSTRAP": "127.0.0.1:1",
                     "BACKBONE_KAFKA_TIMEOUT_S": "1", "BACKBONE_SCHEMA_REGISTRY_URL": "http://127.0.0.1:1",
                     "BACKBONE_CONSOLE_OPERATOR_PASSWORD": PASSWORDS["operator"], "PYTHONUNBUFFERED": "1"})
    process = subprocess.Popen([*CLI, "console"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        url = re.search(r"console on (http://\S+?)/? ", process.stdout.readline())
        assert url, process.stderr.read() if process.poll() is not None else "no URL printed"  # type: ignore[union-attr]

        async def stream_open_while_stopping() -> int:
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
                async with session.post(url.group(1) + "/login", data={"user": "operator", "password": PASSWORDS["operator"]},
                                        allow_redirects=False) as answer:
                    assert answer.status == 302
                async with session.get(url.group(1) + "/events", timeout=aiohttp.ClientTimeout(total=120)) as events:
                    assert b"event: status" in await asyncio.wait_for(events.content.readuntil(b"\n\n"), 60)
                    process.send_signal(signal.SIGTERM)
                    code = await asyncio.get_running_loop().run_in_executor(None, process.wait, 30)
                    with contextlib.suppress(aiohttp.ClientError):
                        await events.content.read()  # the server ended the stream
                    return code

        assert asyncio.run(stream_open_while_stopping()) == 0
        errors = process.stderr.read()  # type: ignore[union-attr]
        assert "ERROR" not in errors and "Traceback" not in errors and "Error handling request" not in errors, errors[-3000:]
    finally:
        if process.poll() is None:
            process.kill()  # only the PID started here
            process.wait(10)


def test_each_flow_links_to_its_lineage_and_catalogue_entries(logins: Logins, snapshot: Snapshot) -> None:
    async def test(client: TestClient) -> None:
        assert await log_in(client, "operator") == 302
        assert (await client.get("/catalog/lineage/tax-to-fraud@2", allow_redirects=False)).status == 200
        page = await (await client.get("/")).text()
        assert '<a href="/catalog/lineage/welfare-to-research%401">lineage welfare-to-research@1</a>' in page
        assert '<a href="/catalog/lineage/tax-to-fraud%402"><g class="edge">' in page  # the picture's edge, to the version in force
        lineage = await (await client.get("/catalog/lineage/welfare-to-research%401")).json()
        assert lineage["job"]["facets"]["legalBasis"]["article"] == "GDPR Art. 6(1)(a)"
        fields = lineage["outputs"][0]["facets"]["columnLineage"]["fields"]
        assert "name" not in fields and fields["national_id"]["inputFields"][0]["transformations"][0]["masking"] is True
        document = await (await client.get("/catalog/asyncapi/research")).json()
        assert list(document["channels"]) == ["shared_research_welfare_benefit_claimed"]
        assert "Record of processing activities: welfare" in await (await client.get("/catalog/ropa/welfare")).text()
        assert "dcat:Dataset" in await (await client.get("/catalog/dcat/catalog")).text()
        assert (await client.get("/catalog/asyncapi/nobody")).status == 404

    async def anonymous(client: TestClient) -> None:
        assert (await client.get("/catalog/asyncapi/research", allow_redirects=False)).status in (302, 303, 401)

    run(logins, snapshot, test)
    run(logins, snapshot, anonymous)
