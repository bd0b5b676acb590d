"""The processor enforces the charter in flight: real broker, real registry, real Faust worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from confluent_kafka import Producer
from fastavro import parse_schema

from backbone.control import agreement_changes
from backbone.events.catalog import load_catalog
from backbone.events.serde import Decoder, Encoder, register, registry_client
from backbone.kafka import dlq
from backbone.kafka.topics import AUDIT_TOPIC, raw_topic, shared_topic
from backbone.keys import pseudonym
from backbone.keys.keyring import Keyring
from backbone.policy.agreements import RELEASED_HEADER, load_agreements
from backbone.settings import PROJECT_ROOT, Settings
from processors.router import DLQ_TOPIC
from producers import AgencyProducer, ConsentPublisher
from tests.pipeline import AuditRecords, Worker, header, private_stack, read_topic

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    with private_stack(tmp_path_factory.mktemp("processor")) as settings:
        yield settings


@pytest.fixture(scope="module")
def worker(stack: Settings) -> Iterator[Worker]:
    worker = Worker(stack, "worker").start()
    yield worker
    worker.stop()


def national_id() -> str:
    return str(uuid.uuid4().int)[:9]


def tax_income(subject: str, *, basis: str = "legal_obligation", purposes: tuple[str, ...] = ("fraud_prevention_and_detection",)) -> dict:
    return {
        "governance": {"lawful_basis": basis, "purposes": list(purposes), "consent_id": None},
        "national_id": subject, "name": "Ada Lovelace", "employer_id": "E-1001", "period": "2026-03",
        "declared_income": 3100.0, "bank_account": "NL91ABNA0417164300",
    }


def welfare_claim(subject: str, *, basis: str = "consent", benefit: str = "income_support",
                  purposes: tuple[str, ...] = ("scientific_research", "fraud_prevention_and_detection", "service_provision")) -> dict:
    return {
        "governance": {"lawful_basis": basis, "purposes": list(purposes), "consent_id": "c-1" if basis == "consent" else None},
        "national_id": subject, "name": "Grace Hopper", "date_of_birth": date(1980, 5, 17), "postcode": "1012 AB",
        "benefit_type": benefit, "period": "2026-03", "monthly_amount": 640.0, "bank_account": "NL02RABO0300065264",
        "household_size": 2, "declared_other_income": 0.0,
    }


def send(settings: Settings, agency: str, event_type: str, record: dict) -> str:
    with AgencyProducer(agency, settings) as producer:
        return producer.send(event_type, record)


def audit_rows(event: dict) -> list[dict]:
    """One audit record per event, as one row per recipient (the audit.decisions view's shape)."""
    return [{**{k: v for k, v in event.items() if k != "decisions"}, **entry,
             "decision": "permit" if entry["outcome"] == "permit" else "deny",
             "reason": None if entry["outcome"] == "permit" else entry["outcome"]} for entry in event["decisions"]]


def decisions(settings: Settings, event_ids: set[str], timeout: float = 60.0) -> dict[tuple[str, str], dict]:
    """Audit records of `event_ids`, by (event id, recipient)."""
    records = AuditRecords(settings)
    found: dict[tuple[str, str], dict] = {}

    def complete(messages: list) -> bool:
        found.clear()
        for event in records(messages):
            for record in audit_rows(event):
                if str(record["event_id"]) in event_ids:
                    found[(str(record["event_id"]), record["recipient"])] = record
        return {event_id for event_id, _ in found} >= event_ids

    read_topic(settings, AUDIT_TOPIC, complete, timeout)
    return found


def reason(found: dict, event_id: str, recipient: str) -> str | None:
    record = found[(event_id, recipient)]
    return record["reason"] if record["decision"] == "deny" else "permit"


def test_each_decision_and_reason_code_reaches_the_audit_trail(stack: Settings, worker: Worker) -> None:
    granted, ungranted, disabled = national_id(), national_id(), national_id()
    with ConsentPublisher(stack) as consent:
        consent.grant(granted, "scientific_research")
        consent.grant(disabled, "scientific_research")
    time.sleep(2)  # the worker's consent feed consumes the grants
    ids = {
        "tax_ok": send(stack, "tax", "tax.income_declared", tax_income(national_id())),
        "tax_wrong_purpose": send(stack, "tax", "tax.income_declared", tax_income(national_id(), purposes=("official_statistics",))),
        "tax_wrong_basis": send(stack, "tax", "tax.income_declared", tax_income(national_id(), basis="public_task")),
        "research_granted": send(stack, "welfare", "welfare.benefit_claimed", welfare_claim(granted)),
        "research_missing": send(stack, "welfare", "welfare.benefit_claimed", welfare_claim(ungranted)),
        "research_condition": send(stack, "welfare", "welfare.benefit_claimed", welfare_claim(disabled, benefit="disability")),
        "address": send(stack, "registry", "registry.address_changed", {
            "governance": {"lawful_basis": "public_task", "purposes": ["service_provision", "fraud_prevention_and_detection"], "consent_id": None},
            "national_id": national_id(), "name": "Alan Turing", "date_of_birth": date(1970, 1, 2),
            "old_postcode": "1012 AB", "new_postcode": "3511 CD", "moved_on": date(2026, 3, 1)}),
    }
    found = decisions(stack, set(ids.values()))
    assert reason(found, ids["tax_ok"], "fraud") == "permit"
    assert reason(found, ids["tax_ok"], "statistics") == "agreement_inactive"  # tax-to-statistics is a draft
    assert reason(found, ids["tax_wrong_purpose"], "fraud") == "purpose_not_permitted"
    assert reason(found, ids["tax_wrong_basis"], "fraud") == "basis_mismatch"
    assert reason(found, ids["research_granted"], "research") == "permit"
    assert reason(found, ids["research_granted"], "fraud") == "basis_mismatch"  # welfare-to-fraud is public_task
    assert reason(found, ids["research_missing"], "research") == "consent_missing"
    assert reason(found, ids["research_condition"], "research") == "condition_false"
    assert reason(found, ids["address"], "welfare") == "permit"
    assert reason(found, ids["address"], "fraud") == "no_agreement"  # registry-to-fraud shares deaths only
    for record in found.values():
        assert (record["reason"] is None) == (record["decision"] == "permit")
        assert record["subject_token"] and "Ada" not in json.dumps(record, default=str)


def test_recipients_receive_only_their_agreements_fields(stack: Settings, worker: Worker) -> None:
    subject = national_id()
    event_id = send(stack, "tax", "tax.income_declared", tax_income(subject))
    decoder = Decoder(registry_client(stack))
    topic = shared_topic("fraud", "tax.income_declared")
    # shared records are keyed by the subject's pseudonym in the agreement's domain
    expected_key = pseudonym.token("fraud", subject, keyring=Keyring.open(stack)).encode()
    messages = read_topic(stack, topic, lambda ms: any(m.key() == expected_key for m in ms))
    released = next(m for m in messages if m.key() == expected_key)
    record = decoder(released.value()).record
    assert str(record["event_id"]) != event_id, "each recipient gets its own id for the event"
    charter = load_agreements(stack.agreements_dir, load_catalog(stack.schemas_dir))
    agreement_id, version = header(released, "agreement").split("@")
    agreement = charter.get(agreement_id, int(version))
    assert [name for name, _ in released.headers()] == ["agreement"], "no other header leaves the processor"
    assert set(record) == set(RELEASED_HEADER) | set(agreement.released_names())
    assert "name" not in record and "governance" not in record
    assert subject not in released.value().decode("latin-1")
    assert "NL91ABNA0417164300" not in released.value().decode("latin-1")
    assert subject.encode() not in (released.key() or b"")


def test_consent_withdrawal_takes_effect_in_flight(stack: Settings, worker: Worker) -> None:
    subject = national_id()
    with ConsentPublisher(stack) as consent:
        consent.grant(subject, "scientific_research")
    time.sleep(2)
    before = send(stack, "welfare", "welfare.benefit_claimed", welfare_claim(subject))
    assert reason(decisions(stack, {before}), before, "research") == "permit"
    with ConsentPublisher(stack) as consent:
        consent.withdraw(subject, "scientific_research")
    time.sleep(2)
    after = send(stack, "welfare", "welfare.benefit_claimed", welfare_claim(subject))
    assert reason(decisions(stack, {after}), after, "research") == "consent_withdrawn"


def test_bad_input_goes_to_the_dlq_and_the_pipeline_keeps_going(stack: Settings, worker: Worker) -> None:
    catalog = load_catalog(stack.schemas_dir)
    registry = registry_client(stack)
    welfare = catalog.events["welfare.benefit_claimed"]
    welfare_encode = Encoder(register(registry, f"{raw_topic(welfare.event_type)}-value", welfare.avro), welfare.parsed)
    no_governance = {"type": "record", "name": "Bare", "namespace": "tests", "fields": [
        {"name": "event_id", "type": "string"}, {"name": "event_type", "type": "string"}]}
    bare_encode = Encoder(register(registry, "tests.bare-value", no_governance), parse_schema(no_governance))
    claim = welfare_claim(national_id(), basis="public_task", purposes=("fraud_prevention_and_detection",))
    header_fields = {"event_id": str(uuid.uuid4()), "event_type": "welfare.benefit_claimed", "occurred_at": 1_700_000_000_000, "provider": "welfare"}
    bad_purpose = {**claim, **header_fields, "governance": {"lawful_basis": "public_task", "purposes": ["marketing"], "consent_id": None}}
    tax_topic = raw_topic("tax.income_declared")
    welfare_topic = raw_topic("welfare.benefit_claimed")
    cases = {
        "bad_magic_byte": (tax_topic, b"\x07not avro at all"),
        "unknown_schema_id": (tax_topic, b"\x00\x00\x0f\x42\x3f" + b"\x02"),
        "truncated_message": (tax_topic, b"\x00\x00"),
        "missing_governance": (tax_topic, bare_encode({"event_id": str(uuid.uuid4()), "event_type": "tax.income_declared"})),
        "unknown_event_type": (tax_topic, welfare_encode({**claim, **header_fields, "event_id": str(uuid.uuid4())})),
        "unknown_purpose": (welfare_topic, welfare_encode(bad_purpose)),
    }
    producer = Producer(stack.producer_config())
    for name, (topic, value) in cases.items():
        producer.produce(topic, value, key=name.encode(), headers=[("trace", name.encode())])
    assert producer.flush(10) == 0
    good = send(stack, "tax", "tax.income_declared", tax_income(national_id()))

    dead = read_topic(stack, DLQ_TOPIC, lambda ms: {m.key() for m in ms} >= {n.encode() for n in cases})
    by_key = {m.key().decode(): m for m in dead if m.key() and m.key().decode() in cases}
    assert set(by_key) == set(cases)
    keys = dlq.DlqKeys.load(stack)  # the processor seals dead letters per subject (crypto-shredding on erasure)
    for name, message in by_key.items():
        assert header(message, "error.reason") == name
        assert header(message, "error.stage") == "processor"
        assert header(message, "error.source_topic") == cases[name][0]
        assert (header(message, "error.source_partition") or "").isdigit()
        assert (header(message, "error.source_offset") or "").isdigit()
        assert header(message, "trace") == name  # original headers kept
        assert keys.open(dlq.DeadLetter.from_message(message)) == cases[name][1]  # original bytes kept, sealed
    assert reason(decisions(stack, {good}), good, "fraud") == "permit"


def test_suspension_takes_effect_without_restart(stack: Settings, worker: Worker) -> None:
    charter = load_agreements(stack.agreements_dir, load_catalog(stack.schemas_dir))
    before = send(stack, "tax", "tax.income_declared", tax_income(national_id()))
    assert reason(decisions(stack, {before}), before, "fraud") == "permit"
    suspended = agreement_changes.change_status(stack, charter, "tax-to-fraud", None, "suspended")
    try:
        time.sleep(2)
        after = send(stack, "tax", "tax.income_declared", tax_income(national_id()))
        found = decisions(stack, {after})
        assert reason(found, after, "fraud") == "agreement_inactive"
        assert found[(after, "fraud")]["agreement_version"] == suspended.version
    finally:
        agreement_changes.change_status(stack, charter, "tax-to-fraud", suspended.version, "active")
    time.sleep(2)
    again = send(stack, "tax", "tax.income_declared", tax_income(national_id()))
    assert reason(decisions(stack, {again}), again, "fraud") == "permit"


APP_FACTORY_CHECK = """
import asyncio, faust, processors.app as module
from faust.cli.base import find_app
assert "app" not in vars(module), "importing processors.app built the app"
app = find_app("processors.app")  # what `faust -A processors.app worker` does
assert isinstance(app, faust.App) and module.app is app
asyncio.run(app.on_first_start())  # Faust creates its directories here
print(app.conf.datadir)
"""


def test_the_app_is_built_on_demand_and_keeps_its_data_under_the_data_dir(tmp_path: Path) -> None:
    cwd, data = tmp_path / "cwd", tmp_path / "data"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKBONE_")}
    result = subprocess.run([sys.executable, "-c", APP_FACTORY_CHECK], capture_output=True, text=True, timeout=120, cwd=cwd,
                            env={**env, "PYTHONPATH": str(PROJECT_ROOT), "BACKBONE_DATA_DIR": str(data)})
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == data / "faust"
    assert (data / "faust").is_dir()
    assert list(cwd.iterdir()) == []
