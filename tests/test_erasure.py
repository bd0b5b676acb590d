"""Right to erasure: `backbone erase` reaches every copy (recipient databases under every key id,
future events, dead letters, consent records) and leaves everyone else and the audit trail intact.
Unit tests first (pure parts), then one run on the real embedded broker, registry, worker and chDB."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from confluent_kafka import Producer

from app.portal import grievances as g
from app.portal.grievance_book import GRIEVANCES_TOPIC, Case, GrievanceBook
from app.portal.grievance_book import forget as forget_grievances
from backbone.control.erasure import (
    ERASURES_TOPIC,
    ErasureRecord,
    erase,
    oversight_tokens,
    recorded_erasures,
    row_targets,
    token_under_key,
    tokens_in_domain,
)
from backbone.control.erasure_requests import REQUESTS_TOPIC, RETENTION_MS, WORK_TOPIC, ErasureDesk
from backbone.errors import AgreementError, BackboneError
from backbone.events.catalog import Catalog, load_catalog
from backbone.events.serde import Decoder, registry_client
from backbone.kafka import dlq
from backbone.kafka.topics import AUDIT_TOPIC, OPERATIONS_TOPIC, raw_topic
from backbone.keys import pseudonym
from backbone.keys.keyring import OVERSIGHT_DOMAIN, Keyring
from backbone.keys.master import master_key_from_settings, write_master_key_file
from backbone.keys.roles import OPERATOR_SIGNER
from backbone.policy import Charter, NoConsent, PolicyEngine, load_agreements
from backbone.policy.agreements import parse_agreement, to_yaml
from backbone.policy.decision import DictErasures
from backbone.settings import PROJECT_ROOT, Settings
from consumers import ddl
from consumers.audit import disclosures
from consumers.plans import recipient_plan
from consumers.sink import sinks_for
from processors.erasure import ErasureTable
from producers import AgencyProducer, ConsentPublisher
from producers.keys import SubjectKeys
from tests.pipeline import AuditRecords, Worker, land, private_stack, read_all, read_topic

NOW = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(PROJECT_ROOT / "schemas")


def surviving(charter: Charter) -> Charter:
    """The demo charter with tax-to-fraud@2 (a legal obligation) surviving erasure."""
    return charter.with_agreement(charter.get("tax-to-fraud", 2).model_copy(update={"survives_erasure": True}))


def tax_income(subject: str) -> dict:
    return {"governance": {"lawful_basis": "legal_obligation", "purposes": ["fraud_prevention_and_detection"], "consent_id": None},
            "national_id": subject, "name": "Ada Lovelace", "employer_id": "E-1001", "period": "2026-03",
            "declared_income": 3100.0, "bank_account": "NL91ABNA0417164300"}


def welfare_claim(subject: str) -> dict:
    return {"governance": {"lawful_basis": "public_task", "consent_id": "c-1",
                           "purposes": ["scientific_research", "fraud_prevention_and_detection", "service_provision"]},
            "national_id": subject, "name": "Grace Hopper", "date_of_birth": date(1980, 5, 17), "postcode": "1012 AB",
            "benefit_type": "income_support", "period": "2026-03", "monthly_amount": 640.0, "bank_account": "NL02RABO0300065264",
            "household_size": 2, "declared_other_income": 0.0}


def address_changed(subject: str) -> dict:
    return {"governance": {"lawful_basis": "public_task", "purposes": ["service_provision"], "consent_id": None},
            "national_id": subject, "name": "Alan Turing", "date_of_birth": date(1970, 1, 2),
            "old_postcode": "1012 AB", "new_postcode": "3511 CD", "moved_on": date(2026, 3, 1)}


# --- pure parts -------------------------------------------------------------------------------------
def test_a_token_under_an_old_key_is_the_token_that_key_made() -> None:
    keyring = Keyring.generate(domains=["fraud"])
    old_id, _ = keyring.active_key("domain", "fraud")
    before = pseudonym.token("fraud", "123456782", keyring=keyring)
    new_id = keyring.rotate("domain", "fraud").key_id
    after = pseudonym.token("fraud", "123456782", keyring=keyring)
    assert before != after
    assert token_under_key(keyring, "fraud", old_id, "123456782") == before
    assert token_under_key(keyring, "fraud", new_id, "123456782") == after
    assert tokens_in_domain(keyring, "fraud", "123456782") == [before, after]


def test_an_erased_subject_is_denied_to_every_recipient_but_under_an_agreement_that_survives_erasure(catalog: Catalog) -> None:
    charter = surviving(load_agreements(PROJECT_ROOT / "agreements", catalog))
    engine = PolicyEngine(charter, Keyring.for_charter(charter), erasures=DictErasures({"123456782"}))
    tax = {"event_id": str(uuid.uuid4()), "event_type": "tax.income_declared", "occurred_at": NOW, "provider": "tax",
           **tax_income("123456782")}
    decided = {d.recipient: d for d in engine.decide(tax, NoConsent(), NOW)}
    assert decided["fraud"].permitted  # tax-to-fraud survives erasure: the legal obligation goes on
    assert decided["statistics"].reason == "erased"  # no agreement in force that survives
    claim = {"event_id": str(uuid.uuid4()), "event_type": "welfare.benefit_claimed", "occurred_at": NOW, "provider": "welfare",
             **welfare_claim("123456782")}
    assert {d.recipient: d.reason for d in engine.decide(claim, NoConsent(), NOW)} == {"fraud": "erased", "research": "erased"}
    someone_else = {**claim, "national_id": "999999990"}
    assert {d.recipient: d.reason for d in engine.decide(someone_else, NoConsent(), NOW)}["fraud"] is None


def test_survives_erasure_is_refused_without_a_legal_obligation(catalog: Catalog) -> None:
    charter = load_agreements(PROJECT_ROOT / "agreements", catalog)
    with pytest.raises(AgreementError, match="survives_erasure: only a legal_obligation basis"):
        charter.with_agreement(charter.get("welfare-to-fraud").model_copy(update={"survives_erasure": True}))
    agreement, problems = parse_agreement(yaml_of(surviving(charter).get("tax-to-fraud", 2)), "t.yaml")
    assert agreement is not None and agreement.survives_erasure and not problems
    assert "survives_erasure" not in to_yaml(charter.get("tax-to-fraud", 2))  # texts without it are unchanged


def yaml_of(agreement) -> dict:  # noqa: ANN001
    import yaml

    return yaml.safe_load(to_yaml(agreement))


def test_the_erasure_table_matches_by_oversight_token_under_every_key_and_is_never_undone() -> None:
    keyring = Keyring.generate()
    keyring.ensure(domains=[OVERSIGHT_DOMAIN])
    tokens = oversight_tokens(keyring, "123456782")
    forgotten: list[tuple[str, ...]] = []
    table = ErasureTable(keyring, on_erased=forgotten.append)
    assert not table.erased("123456782")
    record = ErasureRecord(tokens[0], tuple(tokens), NOW, "dpo", "a-1", ("handle-1",))
    table.apply(tokens[0].encode(), record.to_json())
    assert table.erased("123456782") and not table.erased("999999990")
    assert forgotten == [("handle-1",)]
    table.apply(tokens[0].encode(), None)  # a tombstone does not undo it
    assert table.erased("123456782")
    keyring.rotate("domain", OVERSIGHT_DOMAIN)  # events now get tokens under the new key: still matched
    assert table.erased("123456782")
    assert "123456782" not in repr(vars(table))


def test_an_erasure_this_worker_cannot_compute_stops_its_reader() -> None:
    other = Keyring.generate(domains=[OVERSIGHT_DOMAIN, "x", "y"])
    other.rotate("domain", OVERSIGHT_DOMAIN)
    token = oversight_tokens(other, "123456782")[0]
    mine = Keyring.generate(domains=[OVERSIGHT_DOMAIN])
    with pytest.raises(BackboneError, match="cannot honour the erasure"):
        ErasureTable(mine).apply(token.encode(), None)


def test_rows_are_found_through_each_domains_pseudonym_and_the_clear_id(catalog: Catalog) -> None:
    charter = load_agreements(PROJECT_ROOT / "agreements", catalog)
    keyring = Keyring.for_charter(charter)
    targets = {(t.database, t.table, t.column): t.values for t in row_targets(charter, keyring, "123456782", "p_")}
    fraud_token = pseudonym.token("fraud", "123456782", keyring=keyring)
    assert targets[("p_fraud", "tax_income_declared", "national_id")] == (fraud_token,)
    assert targets[("p_fraud", "alerts", "subject")] == (fraud_token,)
    assert targets[("p_research", "welfare_benefit_claimed", "national_id")] == (pseudonym.token("research", "123456782", keyring=keyring),)
    assert targets[("p_welfare", "registry_address_changed", "national_id")] == ("123456782",)  # identified: kept in clear
    assert not any(database == "p_statistics" for database, _, _ in targets)  # statistics never receives the subject


def test_retention_counts_from_the_event_time_unless_it_was_generalised_to_a_year(catalog: Catalog, tmp_path: Path) -> None:
    from backbone.settings import load_settings

    charter = load_agreements(PROJECT_ROOT / "agreements", catalog)
    settings = load_settings(data_dir=tmp_path)
    for recipient, clock in (("fraud", "occurred_at"), ("research", ddl.LANDED_AT)):
        for destination, columns in recipient_plan(settings, charter, recipient).tables.items():
            assert ddl.retention_clock(columns) == clock
            assert f"TTL `{clock}` + INTERVAL {destination.retention_days} DAY" in ddl.create_table_sql(
                destination.database, destination.table, columns, destination.order_by, destination.retention_days)


# --- the whole erasure on the real stack ------------------------------------------------------------
pipeline = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, clickhouse_dsn: str) -> Iterator[Settings]:
    agreements = tmp_path_factory.mktemp("agreements")
    shutil.copytree(PROJECT_ROOT / "agreements", agreements, dirs_exist_ok=True)
    text = (agreements / "tax_to_fraud.v2.yaml").read_text()
    (agreements / "tax_to_fraud.v2.yaml").write_text(text.replace("retention_days: 1825", "retention_days: 1825\nsurvives_erasure: true"))
    with private_stack(tmp_path_factory.mktemp("erasure"), partitions=2) as base:
        yield base.model_copy(update={"agreements_dir": agreements, "clickhouse_dsn": clickhouse_dsn, "identity": "dpo@example",
                                      "clickhouse_database_prefix": f"e{uuid.uuid4().hex[:8]}_", "sink_batch_seconds": 0.3})


@contextmanager
def processor_desk(settings: Settings, charter: Charter, keyring: Keyring) -> Iterator[ErasureDesk]:
    """What every processor worker runs: answers erasure requests with the processor's keyring."""
    desk = ErasureDesk(settings, charter, keyring).start()
    try:
        yield desk
    finally:
        desk.stop()


def send(settings: Settings, agency: str, event_type: str, record: dict) -> str:
    with AgencyProducer(agency, settings) as producer:
        return producer.send(event_type, record)


def send_person(settings: Settings, subject: str) -> dict[str, str]:
    """One event of each kind about `subject`: provider -> event id."""
    return {"tax": send(settings, "tax", "tax.income_declared", tax_income(subject)),
            "welfare": send(settings, "welfare", "welfare.benefit_claimed", welfare_claim(subject)),
            "registry": send(settings, "registry", "registry.address_changed", address_changed(subject))}


def outcomes(settings: Settings, event_ids: set[str], timeout: float = 60.0) -> dict[tuple[str, str], str]:
    """(event id, recipient) -> permit or the reason, from the audit trail."""
    records = AuditRecords(settings)
    found: dict[tuple[str, str], str] = {}

    def complete(messages: list) -> bool:
        for record in records(messages):
            if str(record["event_id"]) in event_ids:
                for entry in record["decisions"]:
                    found[(str(record["event_id"]), entry["recipient"])] = entry["outcome"]
        return {event_id for event_id, _ in found} >= event_ids

    read_topic(settings, AUDIT_TOPIC, complete, timeout)
    return found


def bad_letter(settings: Settings, key: bytes, body: bytes) -> None:
    producer = Producer(settings.producer_config())
    producer.produce(raw_topic("tax.income_declared"), body, key)
    assert producer.flush(10) == 0


def letters_by_key(settings: Settings, keys: set[bytes]) -> dict[bytes, list[dlq.DeadLetter]]:
    messages = read_topic(settings, dlq.dlq_topic(dlq.PROCESSOR), lambda ms: {m.key() for m in ms} >= keys, timeout=60)
    found: dict[bytes, list[dlq.DeadLetter]] = {}
    for message in messages:
        if message.key() in keys:
            found.setdefault(message.key(), []).append(dlq.DeadLetter.from_message(message))
    return found


def values_in_tables(client, prefix: str, values: list[str]) -> dict[str, int]:  # noqa: ANN001
    """Rows per table of the recipient databases (the audit database aside) where any String column holds one of `values`."""
    found = {}
    columns = client.query(
        "SELECT database, table, groupArray(name) FROM system.columns WHERE startsWith(database, {p:String}) "
        "AND database != {a:String} AND type LIKE '%String%' AND type NOT LIKE '%Array%' GROUP BY database, table",
        parameters={"p": prefix, "a": f"{prefix}audit"}).result_rows
    for database, table, names in columns:
        if client.query("SELECT engine FROM system.tables WHERE database = {d:String} AND name = {t:String}",
                        parameters={"d": database, "t": table}).result_rows[0][0] == "View":
            continue
        where = " OR ".join(f"toString(`{name}`) IN {{v:Array(String)}}" for name in names)
        found[f"{database}.{table}"] = int(client.query(f"SELECT count() FROM `{database}`.`{table}` WHERE {where}",
                                                        parameters={"v": values}).result_rows[0][0])
    return found


@pipeline
def test_erase_reaches_every_copy_of_one_person_and_no_one_else(stack: Settings, clickhouse_client) -> None:  # noqa: ANN001
    settings = stack
    charter = load_agreements(settings.agreements_dir, load_catalog(settings.schemas_dir))
    erased, kept = str(uuid.uuid4().int)[:9], str(uuid.uuid4().int)[:9]
    subject_keys = SubjectKeys.from_settings(settings)
    with ConsentPublisher(settings) as consent:
        for person in (erased, kept):
            consent.grant(person, "scientific_research")
    worker = Worker(settings, "erasure-worker").start()
    try:
        first = {*send_person(settings, erased).values(), *send_person(settings, kept).values()}
        bad_letter(settings, subject_keys(erased), b"\x07raw bytes of the erased person")
        bad_letter(settings, subject_keys(kept), b"\x07raw bytes of someone else")
        assert outcomes(settings, first)
    finally:
        worker.stop()
    # A key rotation between two events: the person's rows carry tokens under two fraud keys.
    master = master_key_from_settings(settings)
    keyring = Keyring.open(settings)
    keyring.rotate("domain", "fraud")
    keyring.save(settings.keyring_path, master)
    worker = Worker(settings, "erasure-worker").start()
    try:
        second = {send(settings, "welfare", "welfare.benefit_claimed", welfare_claim(erased))}
        assert outcomes(settings, second)
        land(sinks_for(settings, charter, clickhouse_client, registry_client(settings)))
        prefix = settings.clickhouse_database_prefix
        keyring = Keyring.open(settings)
        identities = [erased, *(t for d in sorted(charter.domains()) for t in tokens_in_domain(keyring, d, erased))]
        others = [kept, *(t for d in sorted(charter.domains()) for t in tokens_in_domain(keyring, d, kept))]
        before, others_before = values_in_tables(clickhouse_client, prefix, identities), values_in_tables(clickhouse_client, prefix, others)
        assert before[f"{prefix}fraud.welfare_benefit_claimed"] == 2  # one row under each fraud key
        assert before[f"{prefix}research.welfare_benefit_claimed"] == 2 and before[f"{prefix}fraud.tax_income_declared"] == 1
        assert before[f"{prefix}welfare.registry_address_changed"] == 1  # identified: the id in clear
        totals = {table: int(clickhouse_client.query(f"SELECT count() FROM {table}").result_rows[0][0]) for table in before}

        # the operator holds no domain key: the running worker answers the erasure request with its own
        report = erase(settings, charter, clickhouse_client, erased, "request 2026-117", subject_key=subject_keys(erased))

        after = values_in_tables(clickhouse_client, prefix, identities)
        assert not any(after.values()), after  # no row joinable to the person in any domain
        assert values_in_tables(clickhouse_client, prefix, others) == others_before  # everyone else untouched
        for table, count in totals.items():
            assert int(clickhouse_client.query(f"SELECT count() FROM {table}").result_rows[0][0]) == count - before[table]
        assert sum(report.rows.values()) == sum(before.values()) and report.dlq_keys == 1

        time.sleep(2)  # the worker's erasure feed applies the record
        later, other = send_person(settings, erased), send_person(settings, kept)
        bad_letter(settings, subject_keys(erased), b"\x07more raw bytes of the erased person")
        decided = outcomes(settings, {*later.values(), *other.values()})
    finally:
        worker.stop()
    assert decided[(later["tax"], "fraud")] == "permit"  # tax-to-fraud survives erasure: a legal obligation
    assert decided[(later["tax"], "statistics")] == "erased"
    assert decided[(later["welfare"], "fraud")] == decided[(later["welfare"], "research")] == "erased"
    assert decided[(later["registry"], "welfare")] == "erased"
    assert decided[(other["welfare"], "fraud")] == decided[(other["registry"], "welfare")] == "permit"

    letters = letters_by_key(settings, {subject_keys(erased), subject_keys(kept)})
    keys = dlq.DlqKeys.load(settings)
    assert keys.open(letters[subject_keys(kept)][0]) == b"\x07raw bytes of someone else"
    assert len(letters[subject_keys(erased)]) == 2
    for letter in letters[subject_keys(erased)]:
        assert letter.sealed and b"raw bytes" not in (letter.value or b"")
        with pytest.raises(dlq.Shredded):
            keys.open(letter)

    token = oversight_tokens(Keyring.open(settings), erased)[0]
    decoder = Decoder(registry_client(settings))
    recorded = [decoder(m.value()).record for m in read_all(settings, OPERATIONS_TOPIC)]
    mine = [r for r in recorded if r["action"] == "erase" and r["target"] == token]
    assert len(mine) == 1 and mine[0]["outcome"] == "done" and mine[0]["actor"] == "dpo@example"
    assert mine[0]["details"]["rows_total"] == str(sum(before.values()))
    assert not any(erased in str(r) for r in recorded)  # the trail names the person by token only
    erasures = read_all(settings, ERASURES_TOPIC)
    assert [m.key().decode() for m in erasures] == [token] and erased.encode() not in erasures[0].value()
    past = disclosures(clickhouse_client, settings.clickhouse_database_prefix, token, charter)
    assert {d.recipient for d in past} >= {"fraud", "research", "welfare"}  # past disclosures stay accounted for
    land(sinks_for(settings, charter, clickhouse_client, registry_client(settings), recipients=[]))  # the audit sinks
    landed = recorded_erasures(clickhouse_client, settings.clickhouse_database_prefix, token)
    assert [(e.actor, e.outcome, e.reason, e.rows) for e in landed] == [("dpo@example", "done", "request 2026-117", str(sum(before.values())))]
    # the audit trail held no personal data to erase: it still verifies against its signed checkpoints
    from backbone.audit.log import public_key_map
    from consumers.audit_trail import ClickHouseTrail

    report = ClickHouseTrail(clickhouse_client, settings.clickhouse_database_prefix, charter.catalog).verify(
        public_key_map(Keyring.open(settings).public_keys()))
    assert report.ok and report.checkpoints > 0, report

    # `backbone audit subject` after the erasure: past disclosures, the erasure, and no data
    from typer.testing import CliRunner

    from app.cli import _register
    from app.cli import app as cli
    from app.local import worker_environment
    from backbone.settings import get_settings

    _register()
    get_settings.cache_clear()
    try:
        shown = CliRunner().invoke(cli, ["audit", "subject", erased], env={**worker_environment(settings), "COLUMNS": "250"})
    finally:
        get_settings.cache_clear()
    assert shown.exit_code == 0, shown.output
    assert "disclosures about subject" in shown.output and "erased " in shown.output and "dpo@example" in shown.output
    assert erased not in shown.output.replace(f"subject {token}", "")


@pipeline
def test_the_erase_command_needs_an_identity_and_prints_tokens_never_the_id(stack: Settings, tmp_path: Path) -> None:
    from app.local import worker_environment
    from tests.cli import run_backbone

    person = str(uuid.uuid4().int)[:9]
    # an operator's environment: its own keyring with its signing key only, under its own master key
    operator_master = tmp_path / "operator.master.key"
    Keyring.generate(signers=[OPERATOR_SIGNER]).save(tmp_path / "operator.keyring", write_master_key_file(operator_master))
    env = worker_environment(stack, clickhouse_dsn=f"chdb://{tmp_path / 'ch'}", role="operator",  # its own chDB: this process holds the session's
                             keyring_path=str(tmp_path / "operator.keyring"), master_key_file=str(operator_master))
    command = ["erase", "--subject", person, "--reason", "request 7", "--topic-key", f"case-{person}"]
    refused = run_backbone(*command, env=env)
    assert refused.returncode == 1 and "BACKBONE_IDENTITY" in refused.stderr
    bad = run_backbone("erase", "--subject", person, "--reason", "r", "--topic-key", "hex:zz", env={**env, "BACKBONE_IDENTITY": "dpo@example"})
    assert bad.returncode == 1 and "--topic-key hex:" in bad.stderr
    charter = load_agreements(stack.agreements_dir, load_catalog(stack.schemas_dir))
    with processor_desk(stack, charter, Keyring.open(stack)):
        done = run_backbone(*command, env={**env, "BACKBONE_IDENTITY": "dpo@example"})
    assert done.returncode == 0, done.stderr
    token = oversight_tokens(Keyring.open(stack), person)[0]
    assert token in done.stdout.replace("\n", "") and person not in done.stdout + done.stderr
    assert token.encode() in {m.key() for m in read_all(stack, ERASURES_TOPIC)}


# --- nothing of an erased person stays readable (issue 25, item 5) -----------------------------------
def test_dlq_keys_are_per_subject_and_day_and_unkeyed_entries_are_not_one_persons() -> None:
    from backbone.kafka.dlq_keys import DAY_MS, period_start
    from backbone.settings import load_settings

    sealer = dlq.DlqSealer(load_settings(dlq_retention_days=14.0), master_key=b"\x01" * 32)
    published: list[bytes] = []
    sealer._publish = lambda key, value: published.append(key)  # type: ignore[method-assign] - no broker in this unit test
    day = 1_780_000_000_000 - 1_780_000_000_000 % DAY_MS
    _, monday = sealer.seal(b"subject-a", b"x", now_ms=day + 5)
    assert sealer.seal(b"subject-a", b"y", now_ms=day + DAY_MS - 1)[1] == monday  # one key per subject per day
    _, tuesday = sealer.seal(b"subject-a", b"z", now_ms=day + DAY_MS)
    assert tuesday != monday and period_start(monday) == day and period_start(tuesday) == day + DAY_MS
    _, unkeyed = sealer.seal(None, b"w", now_ms=day + DAY_MS + 1)
    assert unkeyed.startswith(f"{dlq.UNKEYED}.p{day + DAY_MS}.")
    sealer.forget([dlq.UNKEYED])  # an erasure never forgets everyone's unkeyed key: it expires with the retention
    assert sealer.seal(None, b"v", now_ms=day + DAY_MS + 2)[1] == unkeyed
    assert [key.decode() for key in published] == [monday, tuesday, unkeyed]
    short = dlq.DlqSealer(load_settings(dlq_retention_days=0.25), master_key=b"\x01" * 32)
    short._publish = lambda key, value: None  # type: ignore[method-assign]
    assert period_start(short.seal(None, b"v", now_ms=day + DAY_MS // 4 + 1)[1]) == day + DAY_MS // 4  # never longer than the retention


def person_events(subject: str, name: str) -> list[tuple[str, str, dict]]:
    return [("tax", "tax.income_declared", {**tax_income(subject), "name": name}),
            ("welfare", "welfare.benefit_claimed", {**welfare_claim(subject), "name": name}),
            ("registry", "registry.address_changed", {**address_changed(subject), "name": name})]


def probe_rule():  # noqa: ANN201 - a fraud rule that alerts on every claimant of the fraud database
    from consumers.fraud import Rule

    return Rule("erasure_probe", "every claimant", {"welfare_benefit_claimed": ("national_id", "period")},
                lambda db, _: f"SELECT 'erasure_probe' AS kind, national_id AS subject, period, '{{}}' AS details "
                              f"FROM `{db}`.`welfare_benefit_claimed`")


def message_bytes(message) -> bytes:  # noqa: ANN001
    """Everything a reader of the topic gets: key, value, header names and values."""
    parts = [message.key() or b"", message.value() or b""]
    for name, value in message.headers() or []:
        parts += [name.encode(), value or b""]
    return b"\x00".join(parts)


@pipeline
def test_after_an_erasure_nothing_of_the_person_is_readable_on_any_topic_or_table(stack: Settings, clickhouse_client) -> None:  # noqa: ANN001, C901
    from backbone.kafka.compacted import read_to_end
    from backbone.kafka.dlq_keys import retention_ms
    from backbone.kafka.topics import (
        ALERTS_TOPIC,
        CONSENT_TOPIC,
        Topics,
        alerts_topic_config,
        consent_topic_config,
        eager_compaction,
    )
    from consumers.fraud import FraudDetector

    settings = stack
    charter = load_agreements(settings.agreements_dir, load_catalog(settings.schemas_dir))
    person, name = str(uuid.uuid4().int)[:9], f"Person {uuid.uuid4().hex[:12]}"
    subject_key = SubjectKeys.from_settings(settings)(person)
    case_key = f"case-{uuid.uuid4().hex[:10]}".encode()  # a provider that keys by its own case number
    with ConsentPublisher(settings) as consent:
        consent.grant(person, "scientific_research")
    worker = Worker(settings, "erasure-scan-worker").start()
    try:
        sent = {send(settings, agency, event_type, record) for agency, event_type, record in person_events(person, name)}
        letters = {b"sdk": subject_key, b"case": case_key, b"none": None}
        for label, key in letters.items():
            producer = Producer(settings.producer_config())
            producer.produce(raw_topic("tax.income_declared"), b"\x07" + label + f" {person} {name}".encode(), key)
            assert producer.flush(10) == 0
        assert outcomes(settings, sent)
        keyed = {subject_key, case_key}
        assert read_topic(settings, dlq.dlq_topic(dlq.PROCESSOR), lambda ms: sum(m.key() in keyed for m in ms) >= 2
                          and any(m.key() is None for m in ms), timeout=60)
    finally:
        worker.stop()
    land(sinks_for(settings, charter, clickhouse_client, registry_client(settings)))
    detector = FraudDetector(settings, clickhouse_client, rules={"erasure_probe": probe_rule()})
    keyring = Keyring.open(settings)
    fraud_tokens = tokens_in_domain(keyring, "fraud", person)
    assert any(alert.subject in fraud_tokens for alert in detector.detect()), "the person has an alert on alerts.fraud"
    detector.close()

    # the person complained in the portal: the case names them by oversight pseudonym, in their own words
    book = GrievanceBook(settings)
    theirs = book.save(Case(g.file("tax", f"{sorted(sent)[0]}.fraud", datetime.now(UTC), g.profile("gdpr")),
                            oversight_tokens(keyring, person)[0], f"I am {name}, why was my income shared?"), "portal")
    theirs = book.save(Case(g.move(theirs.grievance, g.ACKNOWLEDGED, datetime.now(UTC), "handler", f"Dear {name}, received"),
                            theirs.subject_token, theirs.text), "handler")
    others = book.save(Case(g.file("tax", "other.fraud", datetime.now(UTC), g.profile("gdpr")), "someone-else", "not mine"), "portal")
    book.close()

    with processor_desk(settings, charter, keyring):
        report = erase(settings, charter, clickhouse_client, person, "request 2026-311", subject_key=subject_key,
                       topic_keys=[case_key], also={"grievances": forget_grievances})
    assert report.alerts >= 1 and report.dlq_keys >= 2 and report.consent_records >= 1
    assert report.others == {"grievances": 1}
    # kept for legal claims (Art. 17(3)(e)), with nothing that leads back to the person; someone else's case untouched
    kept = {m.key(): json.loads(m.value()) for m in read_to_end(settings, GRIEVANCES_TOPIC, timeout=20) if m.value() is not None}
    case = kept[theirs.grievance.tracking_id.encode()]
    assert (case["subject_token"], case["text"], case["entry"]) == ("", "", "")
    assert [(s["state"], s["by"], s["note"]) for s in case["steps"]] == [("received", "subject", ""), ("acknowledged", "handler", "")]
    assert kept[others.grievance.tracking_id.encode()]["text"] == "not mine"

    dead = dlq.entries(settings, dlq.PROCESSOR)
    by_label = {label: [e.letter for e in dead if e.letter.key == key and e.letter.source_topic == raw_topic("tax.income_declared")]
                for label, key in letters.items()}
    unkeyed = [letter for letter in by_label[b"none"] if letter.sealed and letter.sealed.startswith(f"{dlq.UNKEYED}.")]
    now = dlq.DlqKeys.load(settings)
    for letter in by_label[b"sdk"] + by_label[b"case"]:  # erased with the person: the SDK's key and the provider's
        with pytest.raises(dlq.Shredded):
            now.open(letter)
    # an unkeyed dead letter is anyone's: readable until the DLQ retention passes, then its key is destroyed
    assert any(person.encode() in (now.open(letter) or b"") for letter in unkeyed)
    later = int(time.time() * 1000) + retention_ms(settings)
    assert dlq.expire(settings, now_ms=later) >= 1
    assert dlq.replay(settings, dlq.select(dead, source_topic=raw_topic("tax.income_declared"))) == 0  # nothing opens any more

    # every pseudonym of the person: every domain's tokens, the oversight tokens, every value rows are found by
    keyring = Keyring.open(settings)
    oversight = oversight_tokens(keyring, person)
    pseudonyms = {t for d in sorted(charter.domains()) for t in tokens_in_domain(keyring, d, person)}
    pseudonyms |= {v for target in row_targets(charter, keyring, person, settings.clickhouse_database_prefix) for v in target.values}
    needles = {person, name, *pseudonyms, *oversight}
    raw_needles = {subject_key, case_key}
    assert fraud_tokens[0] in needles and person in needles

    def found(data: bytes, keys: bool = True) -> set[str]:
        hits = {needle for needle in needles if needle.encode() in data}
        return hits | ({key.decode() for key in raw_needles if key in data} if keys else set())

    keys_left = dlq.DlqKeys.load(settings)
    residues: dict[str, set[str]] = {}
    for topic in Topics(settings).list():
        if topic.name.startswith(("raw.", "shared.")) or topic.name in (REQUESTS_TOPIC, WORK_TOPIC):
            # producers' and recipients' streams, the erasure request (processors only) and its answer (operators
            # only): not erased per person, they age out with the topic's retention (checked below for the erasure's)
            continue
        messages = read_to_end(settings, topic.name, timeout=20)
        tombstoned = {(m.partition(), m.key()): m.offset() for m in messages if m.value() is None}
        latest = {(m.partition(), m.key()): m.offset() for m in messages}
        for message in messages:
            hits = found(message_bytes(message))
            if topic.name.startswith("dlq."):
                letter = dlq.DeadLetter.from_message(message)
                hits = found(message.value() or b"") | found(b"".join(v or b"" for _, v in letter.original_headers))
                try:
                    hits |= found(keys_left.open(letter) or b"")  # decrypted with every key still there
                except dlq.Shredded:
                    pass
            elif topic.name.startswith("audit.") or topic.name == ERASURES_TOPIC:
                hits -= set(oversight)  # the trail names people by oversight token only, by design
            elif topic.name == GRIEVANCES_TOPIC:  # a case republished without the personal parts supersedes the earlier ones
                if latest[(message.partition(), message.key())] > message.offset():
                    hits = set()  # removed by compaction (the topic's config checked below)
            elif topic.name in (CONSENT_TOPIC, ALERTS_TOPIC):
                superseded = tombstoned.get((message.partition(), message.key()), -1) >= message.offset()
                if superseded:
                    hits = set()  # removed by compaction, by the deadline the topic's config guarantees (checked below)
            if hits:
                residues.setdefault(topic.name, set()).update(hits)
    assert residues == {}, residues
    assert Topics(settings).describe(CONSENT_TOPIC).config.items() >= consent_topic_config().items()
    for name in (REQUESTS_TOPIC, WORK_TOPIC):
        assert int(Topics(settings).describe(name).config["retention.ms"]) == RETENTION_MS
    assert Topics(settings).describe(ALERTS_TOPIC).config.items() >= alerts_topic_config().items()
    assert Topics(settings).describe(GRIEVANCES_TOPIC).config.items() >= eager_compaction().items()
    dlq_config = Topics(settings).describe(dlq.dlq_topic(dlq.PROCESSOR)).config
    assert int(dlq_config["retention.ms"]) == retention_ms(settings)  # dead letters' keys (the raw keys) age out with it

    prefix = settings.clickhouse_database_prefix
    tables = clickhouse_client.query("SELECT database, name FROM system.tables WHERE startsWith(database, {p:String}) "
                                     "AND engine NOT IN ('View', 'MaterializedView')", parameters={"p": prefix}).result_rows
    assert {database for database, _ in tables} >= {f"{prefix}fraud", f"{prefix}research", f"{prefix}welfare", f"{prefix}audit"}
    for database, table in tables:
        rows = clickhouse_client.query(
            f"SELECT DISTINCT arrayJoin(arrayFilter(n -> position(formatRow('TabSeparated', *), n) > 0, {{n:Array(String)}})) "
            f"FROM `{database}`.`{table}`", parameters={"n": sorted(needles)}).result_rows
        hits = {row[0] for row in rows}
        if database == f"{prefix}audit":
            hits -= set(oversight)
        assert not hits, f"{database}.{table} still holds {hits}"
