"""The citizen's portal: a person signs in with a one-time link and sees exactly the audit trail's
entries about them (never anyone else's, whatever link, cookie, parameter or endpoint is tried),
each with a receipt that verifies offline; withdraws consent and the next event is denied; entries
under a deferred notice appear only once oversight releases them, with a proof sealed before.

The pipeline is real: the embedded broker and registry, a processor worker, the audit sinks into
the session's chDB (a database prefix of this module's own)."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from app.local import worker_environment
from app.portal import grievances as g
from app.portal import links
from app.portal.consent import withdraw
from app.portal.handling import CLOCK
from app.portal.links import LinkDesk, LinkRefused, issue, link_key
from app.portal.records import SHOWN_OUTCOMES, Entry, Releases, visible
from app.portal.server import SESSIONS, CachedCharter, make_app
from app.portal.sessions import COOKIE, PortalSessions
from app.portal.trail import PortalTrail
from backbone.audit.log import CheckpointCodec
from backbone.audit.receipts import verify_receipt
from backbone.events.catalog import AUDIT_CHECKPOINT, load_catalog
from backbone.events.serde import registry_client
from backbone.kafka.topics import OPERATIONS_CHECKPOINTS_TOPIC, OPERATIONS_TOPIC, Topics
from backbone.keys.keyring import Keyring
from backbone.policy.agreements import Notice, load_agreements, parse_agreement
from backbone.settings import PROJECT_ROOT, Settings
from consumers.sink import Sink, audit_plan, checkpoints_plan, operations_plan
from processors.app import Enforcement
from producers.sdk import AgencyProducer, ConsentPublisher
from tests.cli import run_backbone
from tests.pipeline import private_stack
from tests.test_erasure import address_changed, outcomes, tax_income, welfare_claim

CATALOG = load_catalog(PROJECT_ROOT / "schemas")
KEY = Fernet.generate_key()


# --- pure parts -------------------------------------------------------------------------------------
def test_a_link_opens_once_and_names_no_one_in_its_url(tmp_path: Path) -> None:
    desk = LinkDesk(KEY, tmp_path / "used")
    token = issue(KEY, "123456782")
    assert "123456782" not in links.link_url("http://p", token)
    assert desk.redeem(token).subject == "123456782"
    with pytest.raises(LinkRefused, match="used already"):
        desk.redeem(token)
    with pytest.raises(LinkRefused, match="used already"):  # a restarted portal remembers the links used
        LinkDesk(KEY, tmp_path / "used").redeem(token)


def test_forged_altered_and_expired_links_are_refused() -> None:
    desk = LinkDesk(KEY)
    forged = issue(Fernet.generate_key(), "123456782")
    token = issue(KEY, "123456782", now=time.time() - links.LINK_TTL_S - 5)
    good = issue(KEY, "123456782")
    altered = good[:-6] + ("A" if good[-6] != "A" else "B") + good[-5:]
    for bad in (forged, token, altered, "", "not-a-token", good + "x"):
        with pytest.raises(LinkRefused):
            desk.redeem(bad)


def test_the_link_key_is_made_once_and_private(tmp_path: Path) -> None:
    first = link_key(tmp_path)
    assert link_key(tmp_path) == first
    assert (tmp_path / "portal" / "link.key").stat().st_mode & 0o077 == 0


def test_refused_links_are_throttled_per_client_and_a_sign_in_posted_from_another_site_is_refused(tmp_path: Path) -> None:
    from app.portal.sessions import MAX_FAILURES

    async def go() -> None:
        app = make_app(None, LinkDesk(KEY, tmp_path / "used"), CATALOG, lambda s, p: "")  # type: ignore[arg-type]
        async with TestClient(TestServer(app)) as client:
            for _ in range(MAX_FAILURES):
                assert (await client.post("/signin", data={"t": "forged"})).status == 403
            locked = await client.post("/signin", data={"t": issue(KEY, "123456782")})
            assert locked.status == 429 and locked.headers["Retry-After"] == "60"  # unchecked, even a good link
            app[SESSIONS]._failures.clear()  # noqa: SLF001 - the minute has passed
            other_site = await client.post("/signin", data={"t": issue(KEY, "123456782")}, headers={"Origin": "https://evil.example"},
                                           allow_redirects=False)
            assert other_site.status == 403 and COOKIE not in other_site.cookies
            assert (await client.post("/signin", data={"t": issue(KEY, "123456782")}, allow_redirects=False)).status == 302

    asyncio.run(go())
    sessions = PortalSessions()
    for _ in range(MAX_FAILURES):
        sessions.failed("198.51.100.7")
    assert sessions.locked("198.51.100.7") and not sessions.locked("203.0.113.9")  # one address locks out no one else


def test_a_notice_takes_exactly_one_form() -> None:
    assert Notice.model_validate({"until_released": True}).kind == "until_released"
    assert Notice.model_validate({"suppressed": {"legal_reference": "Police Act s.12"}}).kind == "suppressed"
    assert Notice.model_validate({"deferred_until": "2027-01-01"}).deferred_until == datetime(2027, 1, 1, tzinfo=UTC)
    for bad in ({}, {"until_released": True, "deferred_until": "2027-01-01"}, {"suppressed": {}}, {"until_released": False}):
        with pytest.raises(ValueError):
            Notice.model_validate(bad)
    text = (PROJECT_ROOT / "agreements" / "registry_to_welfare.yaml").read_text()
    import yaml

    data = yaml.safe_load(text) | {"notice": {"until": "later"}}
    agreement, problems = parse_agreement(data, "x.yaml")
    assert agreement is None and any("notice" in p for p in problems)


def _charter_with(tmp_path: Path, notice: str) -> object:
    directory = tmp_path / "agreements"
    shutil.copytree(PROJECT_ROOT / "agreements", directory)
    path = directory / "registry_to_welfare.yaml"
    path.write_text(path.read_text() + notice)
    return load_agreements(directory, CATALOG)


@pytest.mark.parametrize(("notice", "before", "released", "after_date"), [
    ("notice: {until_released: true}\n", False, True, False),
    ("notice: {deferred_until: 2030-01-01}\n", False, True, True),
    ("notice: {suppressed: {legal_reference: 'Registry Act art. 7'}}\n", False, False, False),
])
def test_held_entries_show_only_after_their_date_or_release(tmp_path: Path, notice: str, before: bool, released: bool,
                                                             after_date: bool) -> None:
    charter = _charter_with(tmp_path, notice)
    entry = Entry("e", datetime(2026, 1, 1, tzinfo=UTC), "registry", "welfare", "registry.address_changed", "permit",
                  "registry-to-welfare@1", notice=charter.get("registry-to-welfare", 1).notice.kind)
    now = datetime(2026, 6, 1, tzinfo=UTC)
    assert visible(entry, charter, Releases(), now) is before
    assert visible(entry, charter, Releases({"registry-to-welfare": now}), now) is released
    assert visible(entry, charter, Releases(), datetime(2030, 1, 1, tzinfo=UTC)) is after_date


def test_agreements_diff_calls_telling_people_later_widening_and_sooner_narrowing(tmp_path: Path) -> None:
    from backbone.policy.diff import diff

    plain = load_agreements(PROJECT_ROOT / "agreements", CATALOG).get("registry-to-welfare", 1)
    later = _charter_with(tmp_path / "a", "notice: {deferred_until: 2030-01-01}\n").get("registry-to-welfare", 1)
    never = _charter_with(tmp_path / "b", "notice: {suppressed: {legal_reference: 'Registry Act art. 7'}}\n").get("registry-to-welfare", 1)
    for old, new, expected in ((plain, later, "widening"), (later, never, "widening"), (never, later, "narrowing"), (later, plain, "narrowing")):
        changes = [c for c in diff(old, new, CATALOG) if c.kind == "notice"]
        assert [c.classification for c in changes] == [expected]


# --- the real pipeline ------------------------------------------------------------------------------
@dataclass
class World:
    settings: Settings
    subjects: list[str]
    expected: dict[str, set[tuple[str, str, str]]]  # subject -> {(event id, recipient, outcome)} visible now
    held: dict[str, set[tuple[str, str, str]]]  # subject -> the same under registry-to-welfare (until released)
    trail: PortalTrail
    sinks: list[Sink]


def _sinks(settings: Settings, client) -> list[Sink]:  # noqa: ANN001
    """The audit sinks, kept for the module: each joins its group once (about 3 s on Tansu)."""
    topics = Topics(settings)  # the operator actions' topics exist before the sinks subscribe (a pattern sees new ones late)
    topics.ensure(OPERATIONS_TOPIC)
    topics.ensure(OPERATIONS_CHECKPOINTS_TOPIC, partitions=1)
    catalog = load_catalog(settings.schemas_dir)
    # Tansu's group join takes about half the session timeout: the sinks' own, short one
    settings = settings.model_copy(update={"consumer_session_timeout_ms": 2000, "consumer_heartbeat_interval_ms": 200})
    return [Sink(settings, plan, client, registry_client(settings))
            for plan in (audit_plan(settings, catalog), operations_plan(settings, catalog), checkpoints_plan(settings, catalog))]


def _land(world: World) -> None:
    for sink in world.sinks:
        sink.run_until_idle(idle_s=0.5, timeout_s=60)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, clickhouse_dsn: str, clickhouse_client) -> Iterator[World]:  # noqa: ANN001
    agreements = tmp_path_factory.mktemp("agreements")
    shutil.copytree(PROJECT_ROOT / "agreements", agreements, dirs_exist_ok=True)
    path = agreements / "registry_to_welfare.yaml"
    path.write_text(path.read_text() + "notice: {until_released: true}\n")
    rng = random.Random(31)
    subjects = [f"{rng.randrange(10**8, 10**9)}" for _ in range(8)]
    with private_stack(tmp_path_factory.mktemp("portal"), partitions=2) as base:
        settings = base.model_copy(update={"agreements_dir": agreements, "clickhouse_dsn": clickhouse_dsn, "identity": "dpo@example",
                                           "clickhouse_database_prefix": f"p{uuid.uuid4().hex[:8]}_", "sink_batch_seconds": 0.3})
        with ConsentPublisher(settings) as consent:
            for subject in subjects[::2]:
                consent.grant(subject, "scientific_research")
        # one processor worker's enforcement in this process (what `backbone process` runs inside Faust), with
        # a short group session (Tansu's join takes about half of it); it runs for the whole module
        worker = Enforcement(settings.model_copy(update={"consumer_session_timeout_ms": 2000, "consumer_heartbeat_interval_ms": 200}))
        worker.start()
        sent: dict[str, str] = {}
        try:
            with AgencyProducer("tax", settings) as tax, AgencyProducer("welfare", settings) as welfare, \
                    AgencyProducer("registry", settings) as registry:
                for subject in subjects:
                    for producer, event_type, make in ((tax, "tax.income_declared", tax_income),
                                                       (welfare, "welfare.benefit_claimed", welfare_claim),
                                                       (registry, "registry.address_changed", address_changed)):
                        if rng.random() < 0.7:
                            sent[producer.send(event_type, make(subject))] = subject
            decided = outcomes(settings, set(sent))
            sinks = _sinks(settings, clickhouse_client)
        except BaseException:
            worker.stop()
            raise
        expected: dict[str, set] = {s: set() for s in subjects}
        held: dict[str, set] = {s: set() for s in subjects}
        for (event_id, recipient), outcome in decided.items():
            if outcome in SHOWN_OUTCOMES:
                (held if recipient == "welfare" else expected)[sent[event_id]].add((event_id, recipient, outcome))
        assert sum(map(len, expected.values())) >= 8 and sum(map(len, held.values())) >= 2  # the seed gives both kinds
        trail = PortalTrail(settings, CachedCharter(settings), Keyring.open(settings))
        world = World(settings, subjects, expected, held, trail, sinks)
        try:
            _land(world)
            yield world
        finally:
            for sink in sinks:
                sink.close()
            worker.stop()


def _app(world: World) -> object:
    return make_app(world.trail, LinkDesk.for_data_dir(world.settings.data_dir), CATALOG,
                    lambda subject, purpose: withdraw(world.settings, CATALOG, subject, purpose))


def run(world: World, test: Callable[[TestClient], Awaitable[None]]) -> None:
    async def go() -> None:
        async with TestClient(TestServer(_app(world))) as client:
            await test(client)

    asyncio.run(go())


async def sign_in(client: TestClient, world: World, subject: str) -> str:
    token = issue(link_key(world.settings.data_dir), subject)
    answer = await client.post("/signin", data={"t": token}, allow_redirects=False)
    assert answer.status == 302
    return answer.cookies[COOKIE].value


def listed(document: dict) -> set[tuple[str, str, str]]:
    return {(e["entry"].split(".")[0], e["to"], e["outcome"]) for e in document["entries"]}


ATTACKS = ("none", "forged_link", "params", "other_cookie", "other_receipt")


@hsettings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(me=st.integers(0, 7), other=st.integers(0, 7), attack=st.sampled_from(ATTACKS))
def test_the_portal_lists_exactly_the_trails_entries_of_the_signed_in_person(world: World, me: int, other: int, attack: str) -> None:
    mine, theirs = world.subjects[me], world.subjects[other]

    async def test(client: TestClient) -> None:
        cookie = await sign_in(client, world, mine)
        headers = {"Cookie": f"{COOKIE}={cookie}"}
        client.session.cookie_jar.clear()
        if attack == "forged_link":  # a link for `theirs` made without the portal's key opens nothing
            answer = await client.post("/signin", data={"t": issue(Fernet.generate_key(), theirs)}, allow_redirects=False)
            assert answer.status == 403 and COOKIE not in answer.cookies
            assert (await client.get("/api/disclosures")).status == 401
        query = {"subject": theirs, "national_id": theirs, "id": theirs, "to": ""} if attack == "params" else {}
        document = await (await client.get("/api/disclosures", params=query, headers=headers)).json()
        assert listed(document) == world.expected[mine]
        page = await (await client.get("/", params=query, headers=headers)).text()
        assert page.count('class="entry"') == len(world.expected[mine])
        if attack == "other_cookie":  # another session's cookie shows that person's entries, not mine: sessions do not mix
            other_cookie = await sign_in(client, world, theirs)
            client.session.cookie_jar.clear()
            assert listed(await (await client.get("/api/disclosures", headers={"Cookie": f"{COOKIE}={other_cookie}"})).json()) \
                == world.expected[theirs]
            assert (await client.get("/api/disclosures", headers={"Cookie": f"{COOKIE}={cookie}x"})).status == 401
        if attack == "other_receipt":  # another person's entry (and a held entry of mine) is no entry of mine
            for event_id, recipient, _ in sorted(world.expected[theirs] - world.expected[mine])[:2] + sorted(world.held[mine])[:1]:
                assert (await client.get(f"/receipt/{event_id}.{recipient}", headers=headers)).status == 404
                assert (await client.get(f"/proof/{event_id}.{recipient}", headers=headers)).status == 404

    run(world, test)


def test_each_receipt_the_portal_gives_verifies_offline_with_the_cli(world: World, tmp_path: Path) -> None:
    subject = next(s for s in world.subjects if world.expected[s])
    event_id, recipient, _ = sorted(world.expected[subject])[0]

    async def test(client: TestClient) -> None:
        await sign_in(client, world, subject)
        answer = await client.get(f"/receipt/{event_id}.{recipient}")
        assert answer.status == 200 and "attachment" in answer.headers["Content-Disposition"]
        (tmp_path / "receipt.json").write_text(await answer.text())
        assert 'id="verified"' in await (await client.get(f"/proof/{event_id}.{recipient}")).text()

    run(world, test)
    keys = tmp_path / "keys.json"
    env = worker_environment(world.settings)
    assert run_backbone("audit", "keys", "--output", str(keys), env=env).returncode == 0
    done = run_backbone("audit", "verify-receipt", str(tmp_path / "receipt.json"), "--keys", str(keys))  # no stack, no keyring
    assert done.returncode == 0 and "receipt holds" in done.stdout, done.stdout + done.stderr


def test_a_post_without_the_sessions_csrf_token_or_from_another_origin_is_refused(world: World) -> None:
    async def test(client: TestClient) -> None:
        await sign_in(client, world, world.subjects[0])
        assert (await client.post("/consent/withdraw", data={"purpose": "scientific_research"})).status == 403
        page = await (await client.get("/consent")).text()
        csrf = page.split('name="csrf" value="')[1].split('"')[0]
        answer = await client.post("/consent/withdraw", data={"purpose": "scientific_research", "csrf": csrf},
                                   headers={"Origin": "https://evil.example"})
        assert answer.status == 403

    run(world, test)


def next_denied_claim(world: World, subject: str, bound_s: float = 10.0) -> str:
    """Claims of `subject` until one is denied to research (the withdrawal reaches every worker's
    consent table within seconds, as `python -m bench.consent` measures): the first denied one's event id;
    it must be `consent_withdrawn`, and come within `bound_s`."""
    started = time.monotonic()
    while True:
        with AgencyProducer("welfare", world.settings) as welfare:
            event_id = welfare.send("welfare.benefit_claimed", welfare_claim(subject))
        outcome = outcomes(world.settings, {event_id})[(event_id, "research")]
        if outcome != "permit":
            assert outcome == "consent_withdrawn"
            return event_id
        assert time.monotonic() - started < bound_s, "the withdrawal was not enforced within the bound"
        time.sleep(0.25)


def test_a_withdrawal_from_the_portal_denies_the_next_event_and_gives_a_consent_receipt(world: World, clickhouse_client) -> None:  # noqa: ANN001
    subject = world.subjects[0]  # consented to scientific_research in the fixture

    async def test(client: TestClient) -> dict:
        await sign_in(client, world, subject)
        page = await (await client.get("/consent")).text()
        csrf = page.split('name="csrf" value="')[1].split('"')[0]
        answer = await client.post("/consent/withdraw", data={"purpose": "scientific_research", "kind": "withdrawn", "csrf": csrf})
        assert answer.status == 200 and 'id="done"' in await answer.text()
        return await (await client.get("/consent/receipts/0")).json()

    async def go() -> dict:
        async with TestClient(TestServer(_app(world))) as client:
            return await test(client)

    receipt = asyncio.run(go())
    assert receipt["event"]["dpv:hasConsentStatus"] == "dpv:ConsentWithdrawn"
    assert receipt["purposes"][0]["dpv:hasPurpose"] == "dpv:ScientificResearch"
    assert {"schema_version", "record_id", "pii_principal_id"} <= set(receipt)
    assert subject not in json.dumps(receipt)
    event_id = next_denied_claim(world, subject)
    _land(world)

    async def shown(client: TestClient) -> None:
        await sign_in(client, world, subject)
        entries = (await (await client.get("/api/disclosures", params={"outcome": "consent_withdrawn"})).json())["entries"]
        assert [(e["entry"], e["shown_as"]) for e in entries] == [(f"{event_id}.research", "not shared: you withdrew your consent")]
        world.expected[subject].add((event_id, "research", "consent_withdrawn"))

    run(world, shown)


def _env(world: World, **extra: str) -> dict[str, str]:
    """The module stack's settings as BACKBONE_* variables (for the in-process CLI, which shares the session's chDB)."""
    return {k: v for k, v in worker_environment(world.settings, **extra).items() if k.startswith("BACKBONE_")}


def test_held_entries_appear_after_release_with_a_proof_sealed_before_it(world: World, clickhouse_client, backbone_cli) -> None:  # noqa: ANN001
    subject = next(s for s in world.subjects if world.held[s])
    event_id, recipient, _ = sorted(world.held[subject])[0]

    async def before(client: TestClient) -> None:
        await sign_in(client, world, subject)
        assert not listed(await (await client.get("/api/disclosures")).json()) & world.held[subject]
        assert (await client.get(f"/receipt/{event_id}.{recipient}")).status == 404

    run(world, before)
    counted = backbone_cli("portal", "held", **_env(world))
    assert counted.returncode == 0 and "registry-to-welfare@1:" in counted.stdout, counted.stdout + counted.stderr

    async def oversight_sees_the_count() -> None:  # in the console, for oversight only
        from app.console.auth import Logins
        from app.console.server import make_app as console_app
        from app.portal.grievance_book import GrievanceBook

        book = GrievanceBook(world.settings)
        app = console_app(Logins({"operator": "operator-secret-1", "oversight": "oversight-secret-1"}), lambda: None,
                          lambda national_id: None, grievances=book, held=world.trail.held_counts)
        async with TestClient(TestServer(app)) as console:
            for user, shown in (("operator", False), ("oversight", True)):
                console.session.cookie_jar.clear()
                await console.post("/login", data={"user": user, "password": f"{user}-secret-1"})
                page = await (await console.get("/grievances")).text()
                assert ('id="held"' in page and "registry-to-welfare@1" in page) is shown

    asyncio.run(oversight_sees_the_count())
    released = backbone_cli("portal", "release", "registry-to-welfare", "--reason", "investigation closed",
                            **_env(world, identity="dpo@example"))
    assert released.returncode == 0, released.stdout + released.stderr
    _land(world)

    async def after(client: TestClient) -> None:
        await sign_in(client, world, subject)
        assert listed(await (await client.get("/api/disclosures")).json()) >= world.held[subject]
        text = await (await client.get(f"/proof/{event_id}.{recipient}")).text()
        assert 'id="verified"' in text and "sealed before that" in text
        made = await (await client.get(f"/receipt/{event_id}.{recipient}")).json()
        assert verify_receipt(made, CheckpointCodec(CATALOG.internal_schema(AUDIT_CHECKPOINT))) == []

    run(world, after)
    from backbone.audit.log import public_key_map
    from consumers.audit_trail import ClickHouseTrail

    report = ClickHouseTrail(clickhouse_client, world.settings.clickhouse_database_prefix, CATALOG).verify(
        public_key_map(Keyring.open(world.settings).public_keys()))
    assert report.ok and report.operations >= 1, [str(f) for f in report.failures]  # the release is a sealed, anchored-or-signed action


def test_an_entry_inserted_into_the_trail_later_has_no_proof(world: World, clickhouse_client) -> None:  # noqa: ANN001
    subject = next(s for s in world.subjects if any(o == "permit" for _, _, o in world.expected[s]))
    prefix = world.settings.clickhouse_database_prefix
    events = f"`{prefix}audit`.`events`"
    forged = str(uuid.uuid4())
    source, recipient, _ = next(e for e in sorted(world.expected[subject]) if e[2] == "permit")  # one the person sees
    clickhouse_client.command(  # a copy of one of their records under a new event id, claiming that record's sealed position
        f"INSERT INTO {events} SELECT * REPLACE (toUUID('{forged}') AS event_id, now64(3) AS decided_at) FROM {events} "
        f"WHERE (writer, checkpoint, leaf) IN (SELECT writer, checkpoint, leaf FROM {events} WHERE event_id = toUUID('{source}')) LIMIT 1")

    async def test(client: TestClient) -> None:
        await sign_in(client, world, subject)
        entries = (await (await client.get("/api/disclosures")).json())["entries"]
        mine = [e["entry"] for e in entries if e["entry"].startswith(forged)]
        assert mine  # the person sees what the table holds ...
        assert (await client.get(f"/receipt/{mine[0]}")).status == 409  # ... and that it is not sealed in the trail
        assert (await client.get(f"/proof/{mine[0]}")).status == 409
        # the sealed record whose place the copy claims (and every other in its checkpoint) keeps its receipt
        made = await client.get(f"/receipt/{source}.{recipient}")
        assert made.status == 200, await made.text()
        assert verify_receipt(await made.json(), CheckpointCodec(CATALOG.internal_schema(AUDIT_CHECKPOINT))) == []
        assert 'id="verified"' in await (await client.get(f"/proof/{source}.{recipient}")).text()

    run(world, test)


def test_a_console_handler_is_name_at_agency_and_logs_in_as_a_handler_of_that_agency(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.console.auth import HANDLER, Logins, agency_of
    from backbone.errors import SettingsError
    from backbone.settings import load_settings

    monkeypatch.setenv("BACKBONE_CONSOLE_HANDLERS", '{"bob@welfare": "handler-pass-2"}')
    assert Logins.from_settings(load_settings(console_operator_password=None, console_oversight_password=None)).users == ["bob@welfare"]
    monkeypatch.setenv("BACKBONE_CONSOLE_HANDLERS", "bob@welfare=handler-pass-2")
    with pytest.raises(SettingsError, match="console_handlers.*takes JSON") as refused:
        load_settings()
    assert "handler-pass-2" not in str(refused.value)

    assert agency_of("alice@tax") == "tax" and agency_of("a@b@welfare") == "welfare"
    for bad in ("alice", "@tax", "alice@", "alice@ tax", "operator"):
        with pytest.raises(SettingsError, match="name@agency"):
            agency_of(bad)
    with pytest.raises(SettingsError, match="name@agency"):
        Logins({"operator": "operator-pass-1"}, {"tax": "handler-pass-1"})
    logins = Logins({"operator": "operator-pass-1"}, {"alice@tax": "handler-pass-1"})
    token = asyncio.run(logins.log_in("alice@tax", "handler-pass-1"))
    session = logins.session(token)
    assert session is not None and (session.user, session.role, session.agency) == ("alice@tax", HANDLER, "tax")
    assert asyncio.run(logins.log_in("alice@tax", "operator-pass-1")) is None
    assert logins.session(asyncio.run(logins.log_in("operator", "operator-pass-1"))).agency is None


def test_an_agencys_handler_sees_and_moves_only_its_agencys_grievances_and_the_trail_names_them(
        world: World, clickhouse_client) -> None:  # noqa: ANN001
    """The attack: a handler of one agency reads or moves another agency's case by URL, form field or page."""
    from app.console.auth import Logins
    from app.console.server import make_app as console_app
    from app.portal.grievance_book import Case, GrievanceBook

    book = GrievanceBook(world.settings.model_copy(update={"identity": None}))
    now = datetime.now(UTC)
    ours = book.save(Case(g.file("tax", "e-tax.fraud", now, g.profile("gdpr")), "token-of-one", "tax complaint text"), "portal")
    theirs = book.save(Case(g.file("welfare", "e-welfare.research", now, g.profile("gdpr")), "token-of-two", "welfare complaint text"),
                       "portal")
    console = console_app(Logins({"operator": "operator-pass-1"}, {"alice@tax": "handler-pass-1"}), lambda: None,
                          lambda national_id: None, grievances=book)
    ours_id, theirs_id = ours.grievance.tracking_id, theirs.grievance.tracking_id

    async def go() -> None:
        async with TestClient(TestServer(console)) as alice, TestClient(TestServer(console)) as operator:
            assert (await alice.post("/login", data={"user": "alice@tax", "password": "handler-pass-1"})).status == 200
            listing = await (await alice.get("/grievances")).text()
            assert ours_id in listing and "tax complaint text" in listing
            assert theirs_id not in listing and "welfare complaint text" not in listing
            form_csrf = listing.split('name="csrf" value="')[1].split('"')[0]
            for attempt in ({"to": g.RESOLVED, "note": "done", "csrf": form_csrf},
                            {"to": g.RESOLVED, "note": "done", "csrf": form_csrf, "agency": "welfare", "id": theirs_id}):
                moved = await alice.post(f"/grievances/{theirs_id}", data=attempt, allow_redirects=False)
                assert moved.status == 404 and "welfare" not in await moved.text()
            wrong_form = await alice.post(f"/grievances/{ours_id}", data={"to": g.RESOLVED, "csrf": form_csrf, "id": theirs_id},
                                          allow_redirects=False)  # a form field naming another case moves nothing but the URL's
            assert wrong_form.status == 302
            for path in ("/charter", "/subject", "/events", "/catalog/event/tax.income_declared", f"/grievances/{theirs_id}"):
                answer = await alice.get(path, allow_redirects=False)
                assert answer.status in (403, 404, 405), path
                assert "welfare complaint text" not in await answer.text()
            assert (await alice.get("/", allow_redirects=False)).headers["Location"] == "/grievances"
            await operator.post("/login", data={"user": "operator", "password": "operator-pass-1"})
            everything = await (await operator.get("/grievances")).text()
            assert ours_id in everything and theirs_id in everything

    try:
        asyncio.run(go())
        assert book.cases()[theirs_id].grievance.state == g.RECEIVED
        assert book.cases()[ours_id].grievance.steps[-1].by == "alice@tax"
    finally:
        book.close()
    _land(world)
    actors = clickhouse_client.query(f"SELECT target, outcome, actor FROM `{world.settings.clickhouse_database_prefix}audit`.`operations` "
                                     "WHERE action = 'grievance' AND target IN {t:Array(String)} ORDER BY at",
                                     parameters={"t": [ours_id, theirs_id]}).result_rows
    assert sorted(actors) == sorted([(ours_id, "received", "portal"), (theirs_id, "received", "portal"), (ours_id, "resolved", "alice@tax")])


def test_a_grievance_runs_from_the_portal_through_the_console_to_closed_with_every_step_in_the_trail(
        world: World, clickhouse_client) -> None:  # noqa: ANN001
    from app.console.auth import Logins
    from app.console.server import make_app as console_app
    from app.portal.grievance_book import GrievanceBook

    book = GrievanceBook(world.settings.model_copy(update={"identity": None}))
    clock = [datetime(2027, 1, 31, 10, 0, tzinfo=UTC)]
    subject = next(s for s in world.subjects if world.expected[s])
    stranger = next(s for s in world.subjects if s != subject)
    event_id, recipient, _ = sorted(world.expected[subject])[0]
    def portal_app() -> object:
        return make_app(world.trail, LinkDesk.for_data_dir(world.settings.data_dir), CATALOG, lambda s, p: "", book=book,
                        clock=lambda: clock[0])

    console = console_app(Logins({"operator": "handler-secret-1"}), lambda: None, lambda national_id: None, grievances=book)
    console[CLOCK] = lambda: clock[0]

    async def go() -> None:
        async with TestClient(TestServer(portal_app())) as person, TestClient(TestServer(console)) as handler:
            await sign_in(person, world, subject)
            page = await (await person.get("/grievances")).text()
            csrf = page.split('name="csrf" value="')[1].split('"')[0]
            filed = await person.post("/grievances", data={"csrf": csrf, "entry": f"{event_id}.{recipient}", "text": "why was this shared?"})
            text = await filed.text()
            assert filed.status == 200 and "2027-02-28" in text  # 31 January + one calendar month
            tracking = text.split("tracking id is ")[1].split(".")[0]
            assert tracking in await (await person.get("/grievances")).text()
            async with TestClient(TestServer(portal_app())) as other:  # nobody else sees it, and nobody else's entry can be the subject
                await sign_in(other, world, stranger)
                assert tracking not in await (await other.get("/grievances")).text()
                page = await (await other.get("/grievances")).text()
                other_csrf = page.split('name="csrf" value="')[1].split('"')[0]
                assert (await other.post(f"/grievances/{tracking}/appeal", data={"csrf": other_csrf})).status == 404
            await handler.post("/login", data={"user": "operator", "password": "handler-secret-1"})
            listing = await (await handler.get("/grievances")).text()
            assert tracking in listing and "why was this shared?" in listing
            form_csrf = listing.split('name="csrf" value="')[1].split('"')[0]
            for to, note, days in ((g.ACKNOWLEDGED, "", 1), (g.RESOLVED, "the law requires it; see the agreement", 5)):
                clock[0] += timedelta(days=days)
                answer = await handler.post(f"/grievances/{tracking}", data={"to": to, "note": note, "csrf": form_csrf}, allow_redirects=False)
                assert answer.status == 302, await answer.text()
            assert (await handler.post(f"/grievances/{tracking}", data={"to": "resolved", "csrf": "forged"})).status == 403
            page = await (await person.get("/grievances")).text()
            assert "resolved" in page
            csrf = page.split('name="csrf" value="')[1].split('"')[0]
            assert (await person.post(f"/grievances/{tracking}/appeal", data={"csrf": csrf, "note": "poor"}, allow_redirects=False)).status == 302
            clock[0] += timedelta(days=2)
            assert (await handler.post(f"/grievances/{tracking}", data={"to": "closed", "csrf": form_csrf}, allow_redirects=False)).status == 302
            assert 'class="case closed"' in await (await person.get("/grievances")).text()
            person.session.cookie_jar.clear()
            stats = await (await person.get("/stats")).text()  # public: no sign-in, no person
            assert ">1<" in stats and tracking not in stats and "why was this shared" not in stats
            assert 'backbone_grievances_breached{agency="' in await (await person.get("/metrics")).text()

    try:
        asyncio.run(go())
        tracking = next(t for t, case in book.cases().items() if case.text == "why was this shared?")  # other tests file cases too
    finally:
        book.close()
    _land(world)
    steps = clickhouse_client.query(f"SELECT outcome FROM `{world.settings.clickhouse_database_prefix}audit`.`operations` "
                                    "WHERE action = 'grievance' AND target = {t:String} ORDER BY at", parameters={"t": tracking}).result_rows
    assert [s for (s,) in steps] == ["received", "acknowledged", "resolved", "appealed", "closed"]



def test_a_case_still_open_after_its_deadline_is_a_breach_on_the_public_page_and_the_metric(world: World) -> None:
    from app.portal.grievance_book import Case, agency_stats
    from app.portal.handling import metrics_text

    case = Case(g.file("tax", "e.fraud", datetime(2027, 1, 31, 10, 0, tzinfo=UTC), g.profile("gdpr")), "tok", "text")
    before, after = datetime(2027, 2, 28, 10, 0, tzinfo=UTC), datetime(2027, 2, 28, 10, 1, tzinfo=UTC)
    assert agency_stats([case], before)[0].deadlines_missed == 0
    assert agency_stats([case], after)[0].deadlines_missed == 1
    assert 'backbone_grievances_breached{agency="tax"} 1' in metrics_text([case], after)


# --- in a real browser --------------------------------------------------------------------------------
class Served:
    """aiohttp applications on real 127.0.0.1 ports, in a thread of their own (Selenium blocks)."""

    def __init__(self, *apps: object) -> None:
        import threading

        from aiohttp import web

        self.urls: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._runners: list[web.AppRunner] = []
        ready = threading.Event()

        async def start() -> None:
            for app in apps:
                runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
                await runner.setup()
                site = web.TCPSite(runner, "127.0.0.1", 0)
                await site.start()
                self._runners.append(runner)
                self.urls.append(f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}")  # noqa: SLF001 - port 0

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(30), "the servers did not start"

    def stop(self) -> None:
        async def cleanup() -> None:
            for runner in self._runners:
                await runner.cleanup()

        asyncio.run_coroutine_threadsafe(cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)


@pytest.mark.slow
def test_in_a_browser_a_person_signs_in_checks_a_receipt_withdraws_consent_and_a_handler_closes_their_grievance(
        world: World, tmp_path: Path) -> None:
    import requests
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from app.console.auth import Logins
    from app.console.server import make_app as console_app
    from app.portal.grievance_book import GrievanceBook
    from tests.browser import BrowserUnavailable, artifacts_dir, chrome

    subject = next((s for s in world.subjects[2::2] if any(r == "research" and o == "permit" for _, r, o in world.expected[s])), None)
    assert subject is not None, "the seed gives a consenting person with a research disclosure"
    try:
        browser = chrome()
    except BrowserUnavailable as exc:
        pytest.skip(f"no headless Chromium: {exc}")
    shots = artifacts_dir("portal")
    book = GrievanceBook(world.settings)
    portal = make_app(world.trail, LinkDesk.for_data_dir(world.settings.data_dir), CATALOG,
                      lambda s, p: withdraw(world.settings, CATALOG, s, p), book=book)
    served = Served(portal, console_app(Logins({"operator": "handler-secret-1"}), lambda: None, lambda national_id: None,
                                        grievances=book))
    portal_url, console_url = served.urls

    def wait(condition: Callable[[object], object], what: str, seconds: float = 20) -> object:
        try:
            return WebDriverWait(browser, seconds, poll_frequency=0.25).until(condition)
        except Exception:  # noqa: BLE001 - say what the page said
            raise AssertionError(f"{what} did not happen; the page said:\n{browser.find_element(By.TAG_NAME, 'body').text[:2000]}") from None

    try:
        browser.get(links.link_url(portal_url, issue(link_key(world.settings.data_dir), subject)))
        browser.find_element(By.ID, "sign-in").click()
        wait(lambda b: b.find_elements(By.ID, "count"), "my disclosures")
        rows = {r.get_attribute("data-entry") for r in browser.find_elements(By.CSS_SELECTOR, "tr.entry")}
        cookie = {c["name"]: c["value"] for c in browser.get_cookies()}
        api = requests.get(f"{portal_url}/api/disclosures", cookies=cookie, timeout=30).json()
        assert rows == {e["entry"] for e in api["entries"]} >= {f"{e}.{r}" for e, r, _ in world.expected[subject]}
        browser.save_screenshot(str(shots / "01-my-disclosures.png"))
        entry = f"{sorted(world.expected[subject])[0][0]}.{sorted(world.expected[subject])[0][1]}"
        browser.get(f"{portal_url}/proof/{entry}")
        wait(lambda b: b.find_elements(By.ID, "verified"), "the receipt's check")
        browser.save_screenshot(str(shots / "02-receipt-verified.png"))
        receipt = requests.get(f"{portal_url}/receipt/{entry}", cookies=cookie, timeout=30).json()
        assert verify_receipt(receipt, CheckpointCodec(CATALOG.internal_schema(AUDIT_CHECKPOINT))) == []

        browser.get(f"{portal_url}/consent")
        browser.find_element(By.CSS_SELECTOR, "form:has(input[value='scientific_research']) button[value='withdrawn']").click()
        wait(lambda b: b.find_elements(By.ID, "done"), "the withdrawal")
        browser.save_screenshot(str(shots / "03-consent-withdrawn.png"))
        event_id = next_denied_claim(world, subject)
        _land(world)
        browser.get(f"{portal_url}/?outcome=consent_withdrawn")
        wait(lambda b: f"{event_id}.research" in [r.get_attribute("data-entry") for r in b.find_elements(By.CSS_SELECTOR, "tr.entry")],
             "the denied event in my disclosures")
        browser.save_screenshot(str(shots / "04-next-event-denied.png"))

        browser.get(f"{portal_url}/grievances")
        Select(browser.find_element(By.NAME, "entry")).select_by_value(entry)
        browser.find_element(By.NAME, "text").send_keys("Why did this agency receive my data?")
        browser.find_element(By.ID, "file-grievance").click()
        tracking = wait(lambda b: "tracking id is" in b.page_source and b.page_source.split("tracking id is ")[1].split(".")[0],
                        "the tracking id")
        browser.save_screenshot(str(shots / "05-grievance-filed.png"))

        browser.get(f"{console_url}/login")
        browser.find_element(By.NAME, "user").send_keys("operator")
        browser.find_element(By.NAME, "password").send_keys("handler-secret-1")
        browser.find_element(By.TAG_NAME, "form").submit()
        for to, note in (("acknowledged", ""), ("resolved", "Shared under the law; see the agreement."), ("closed", "")):
            browser.get(f"{console_url}/grievances")
            row = wait(lambda b: b.find_element(By.CSS_SELECTOR, f"tr[data-case='{tracking}']"), "the case in the console")
            Select(row.find_element(By.NAME, "to")).select_by_value(to)
            row.find_element(By.NAME, "note").send_keys(note)
            row.find_element(By.TAG_NAME, "button").click()
            wait(lambda b, to=to: b.find_elements(By.CSS_SELECTOR, f"tr.case.{to}[data-case='{tracking}']"), f"the case {to}")
        browser.save_screenshot(str(shots / "06-handler-closed-it.png"))

        browser.get(f"{portal_url}/grievances")
        wait(lambda b: b.find_elements(By.CSS_SELECTOR, f"tr.case.closed[data-case='{tracking}']"), "the closed case in the portal")
        browser.save_screenshot(str(shots / "07-person-sees-it-closed.png"))
    finally:
        browser.quit()
        served.stop()
