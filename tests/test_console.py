"""The web console as a browser meets it (aiohttp's test client): a login is required, a wrong
password is refused, the operator may not open the oversight page, the pages show the demo
charter's agencies and flows, and the event stream sends live updates."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest
from aiohttp.test_utils import TestClient, TestServer

from app.console.auth import Logins
from app.console.server import make_app
from app.console.snapshot import Flow, Snapshot, load_charter
from app.status import GroupLag, Status
from backbone.settings import load_settings
from consumers.audit import Disclosure

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


def test_the_demo_starts_the_console_with_made_up_passwords_and_stops_it(tmp_path, capsys) -> None:  # noqa: ANN001
    from types import SimpleNamespace

    from app.cli.demo import _start_console

    settings = load_settings(data_dir=tmp_path, console_port=0, kafka_bootstrap="127.0.0.1:1")
    stop = _start_console(SimpleNamespace(base=settings, settings=settings))
    assert stop is not None
    shown = capsys.readouterr().out
    assert "console: http://127.0.0.1:" in shown and "user oversight, password " in shown
    stop()


def test_repeated_wrong_passwords_lock_the_user_out_for_a_while() -> None:
    from app.console.auth import MAX_FAILURES

    logins = Logins({"operator": "operator-secret-1"})

    async def attempts() -> tuple[list[str | None], str | None]:
        wrong = [await logins.log_in("operator", f"guess-{n}") for n in range(MAX_FAILURES)]
        return wrong, await logins.log_in("operator", "operator-secret-1")

    wrong, right = asyncio.run(attempts())
    assert wrong == [None] * MAX_FAILURES and right is None
