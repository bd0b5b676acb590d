"""Fail closed and lose nothing when the control plane or a dependency fails, each fault injected
by the test on the real embedded stack with a real processor worker:

- an agreement suspended, then its schema and file changed, then the worker restarted: still denied,
  and `backbone status` shows the change;
- the schema registry stopped while the processor runs (events and a consent withdrawal written
  with schema ids the worker has never seen), then started: every event decided once, nothing
  dead-lettered, nothing released without consent;
- a consent reader that dies: nothing is decided any more, and the reason names the reader;
- the schema registry stopped while a sink lands, then started: every row once, nothing dead-lettered.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer

from app.local import ProcessorWorker, provision_keyring, stack_settings
from app.status import collect
from backbone.control import agreement_changes
from backbone.events.catalog import load_catalog
from backbone.events.serde import Decoder, encoder_for, registry_client
from backbone.kafka.topics import AUDIT_TOPIC, CONSENT_TOPIC, OPERATIONS_TOPIC, dlq_topic, raw_topic
from backbone.keys.master import encode_master_key, new_master_key
from backbone.policy.agreements import load_agreements
from backbone.settings import Settings
from backbone.stack.embedded import EmbeddedStack
from producers import AgencyProducer, ConsentPublisher
from tests.pipeline import AuditRecords, read_topic
from tests.test_processor import audit_rows, national_id, tax_income, welfare_claim

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Stack:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.embedded = EmbeddedStack(root, broker_port=0, registry_port=0).start()
        master = new_master_key()
        self.settings = stack_settings(self.embedded, root, master_key=encode_master_key(master), kafka_partitions=2)
        provision_keyring(self.settings, master)

    def stop(self) -> None:
        self.embedded.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    made = Stack(tmp_path_factory.mktemp("failsafe"))
    try:
        yield made
    finally:
        made.stop()


def decisions_for(settings: Settings, event_id: str, count: int, timeout: float = 60.0) -> dict[str, str]:
    """recipient -> `permit` or the deny reason, once `count` decisions for the event are on the audit topic."""
    records = AuditRecords(settings)

    def mine(messages: list) -> list[dict]:
        return [r for event in records(messages) for r in audit_rows(event) if str(r["event_id"]) == event_id]

    found = mine(read_topic(settings, AUDIT_TOPIC, lambda ms: len(mine(ms)) >= count, timeout=timeout))
    return {r["recipient"]: "permit" if r["decision"] == "permit" else r["reason"] for r in found}


def test_a_suspension_survives_a_schema_change_and_a_restart(stack: Stack, tmp_path: Path) -> None:
    settings = stack.settings
    worker = ProcessorWorker(settings, "logs/suspend").start()
    try:
        with AgencyProducer("tax", settings) as producer:
            before = producer.send("tax.income_declared", tax_income(national_id()))
        assert decisions_for(settings, before, 2)["fraud"] == "permit"  # and the worker holds its partitions
        charter = load_agreements(settings.agreements_dir, load_catalog(settings.schemas_dir))
        agreement_changes.publish(settings, [charter.get("tax-to-fraud", 2)])  # the text, as `agreements apply` sends it
        offset = worker.log_size()
        agreement_changes.change_status(settings, charter, "tax-to-fraud", 2, "suspended")
        assert worker.wait_for_line("agreement tax-to-fraud@2 is now suspended", offset)
        decode = Decoder(registry_client(settings))  # the change is a record of the operator's audit trail
        actions = [decode(m.value()).record for m in read_topic(settings, OPERATIONS_TOPIC, lambda ms: bool(ms), timeout=20)]
        assert any(a["action"] == "agreement_status" and a["target"] == "tax-to-fraud@2" and a["details"]["status"] == "suspended"
                   for a in actions)
    finally:
        worker.stop()

    # the schema loses a field and the agreement file with it; the worker restarts on them
    schemas, agreements = tmp_path / "schemas", tmp_path / "agreements"
    shutil.copytree(settings.schemas_dir, schemas)
    shutil.copytree(settings.agreements_dir, agreements)
    schema = json.loads((schemas / "tax.income_declared.avsc").read_text())
    schema["fields"] = [field for field in schema["fields"] if field["name"] != "employer_id"]
    (schemas / "tax.income_declared.avsc").write_text(json.dumps(schema))
    file = agreements / "tax_to_fraud.v2.yaml"
    file.write_text("".join(line for line in file.read_text().splitlines(keepends=True) if "employer_id" not in line))
    changed = settings.model_copy(update={"schemas_dir": schemas, "agreements_dir": agreements})

    worker = ProcessorWorker(changed, "logs/restarted").start()
    try:
        income = tax_income(national_id())
        del income["employer_id"]
        with AgencyProducer("tax", changed) as producer:
            event_id = producer.send("tax.income_declared", income)
        assert decisions_for(changed, event_id, 2)["fraud"] == "agreement_inactive"
        status = collect(changed, timeout=5.0)
        assert ("tax-to-fraud@2", "suspended") in {(key, state) for key, state, _, _ in status.agreement_changes}
        assert "employer_id" in status.agreement_problems.get("tax-to-fraud@2", ""), "the text that no longer applies is shown"
        agreement_changes.change_status(changed, load_agreements(agreements, load_catalog(schemas)), "tax-to-fraud", 2, "active")
    finally:
        worker.stop()


def _variant(schema: dict) -> dict:
    """The same schema with another doc: a new schema id the worker has never fetched."""
    return {**schema, "doc": f"{schema.get('doc', '')} (variant {uuid.uuid4().hex[:6]})"}


def test_a_registry_outage_pauses_the_processor_and_loses_nothing(stack: Stack) -> None:
    settings = stack.settings
    worker = ProcessorWorker(settings, "logs/outage").start()
    try:
        catalog = load_catalog(settings.schemas_dir)
        subject = national_id()
        with ConsentPublisher(settings) as consent:
            consent.grant(subject, "scientific_research")
        time.sleep(1.0)
        with AgencyProducer("welfare", settings) as producer:
            granted = producer.send("welfare.benefit_claimed", welfare_claim(subject))
        assert decisions_for(settings, granted, 2)["research"] == "permit"

        # writers with schema ids the worker has not seen yet, made while the registry is up
        registry = registry_client(settings)
        claims = encoder_for(registry, f"{raw_topic('welfare.benefit_claimed')}-value", _variant(catalog.events["welfare.benefit_claimed"].avro))
        consents = encoder_for(registry, f"{CONSENT_TOPIC}-value", _variant(catalog.events["consent.changed"].avro))
        now_ms = int(time.time() * 1000)
        envelope = {"occurred_at": now_ms}
        claim = {**welfare_claim(subject), **envelope, "event_id": str(uuid.uuid4()),
                 "event_type": "welfare.benefit_claimed", "provider": "welfare"}
        withdrawal = {**envelope, "event_id": str(uuid.uuid4()), "event_type": "consent.changed", "provider": "consent",
                      "governance": {"lawful_basis": "legal_obligation", "purposes": ["legal_compliance"], "consent_id": None},
                      "subject_national_id": subject, "purpose": "scientific_research", "status": "withdrawn",
                      "at": now_ms, "channel": "web"}
        with ConsentPublisher(settings) as publisher:
            consent_key = publisher.subject_key(subject) + b":scientific_research"

        stack.embedded.registry.stop()
        producer = Producer(settings.producer_config())
        producer.produce(CONSENT_TOPIC, consents(withdrawal), consent_key)
        assert producer.flush(10) == 0
        time.sleep(1.0)
        producer.produce(raw_topic("welfare.benefit_claimed"), claims(claim), b"claim-during-outage")
        assert producer.flush(10) == 0
        time.sleep(6.0)
        assert worker.alive(), "an unavailable registry must not stop the worker"
        stack.embedded.registry.start()

        outcome = decisions_for(settings, str(claim["event_id"]), 2, timeout=90)
        assert outcome["research"] == "consent_withdrawn", "nothing is released without consent"
        assert "fraud" in outcome, "the claim written during the outage is decided for every recipient, not lost"
        letters = read_topic(settings, dlq_topic("processor"), lambda ms: False, timeout=3)
        assert not [m for m in letters if m.key() == b"claim-during-outage"], "nothing dead-lettered"
        assert "waits" in worker.tail(200) or "pauses" in worker.tail(200)
    finally:
        worker.stop()


def test_a_dead_consent_reader_stops_all_deciding_and_says_why(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """The enforcement of one worker, in this process: its consent reader dies on a record it cannot
    handle (an unexpected error, as a bug would raise). From then on the data plane decides nothing
    and says which reader died; the worker's watch stops the worker on that reason."""
    from processors.app import Enforcement

    settings = stack.settings
    enforcement = Enforcement(settings)
    enforcement.start()
    try:
        assert enforcement.wait_reason() is None
        with AgencyProducer("tax", settings) as producer:
            before = producer.send("tax.income_declared", tax_income(national_id()))
        assert decisions_for(settings, before, 2)["fraud"] == "permit"

        def broken(message: object) -> None:
            raise RuntimeError("a bug in the consent table")

        monkeypatch.setattr(enforcement.readers[0], "apply", broken)
        with ConsentPublisher(settings) as consent:
            consent.grant(national_id(), "scientific_research")
        deadline = time.monotonic() + 20
        while enforcement.dead_reader() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        reason = enforcement.dead_reader()
        assert reason is not None and "consent-feed stopped reading consent.changes" in reason and "a bug" in reason
        assert enforcement.wait_reason() == reason

        with AgencyProducer("tax", settings) as producer:
            after = producer.send("tax.income_declared", tax_income(national_id()))
        time.sleep(3.0)
        assert enforcement.data_plane is not None and enforcement.data_plane.paused == reason
        assert decisions_for(settings, after, 1, timeout=3) == {}, "nothing is decided without consent state"
    finally:
        enforcement.stop()


def test_a_registry_outage_while_the_sink_lands_loses_no_row_and_dead_letters_none(
    stack: Stack, clickhouse_client, clickhouse_dsn: str, tmp_path: Path  # noqa: ANN001
) -> None:
    from consumers import ddl
    from consumers.sink import Sink, recipient_plan
    from tests.keys import AutoKeyring
    from tests.test_sink import publish, renamed_charter, sink_settings, synthetic_events

    suffix = uuid.uuid4().hex[:8]
    directory, charter, names = renamed_charter(tmp_path, suffix)
    settings = sink_settings(stack.settings.model_copy(update={"clickhouse_dsn": clickhouse_dsn}),
                             directory, suffix)
    events, _ = synthetic_events(events=400, agencies=("tax", "welfare"))
    sent = publish(settings, charter, AutoKeyring(), events)  # recipient schemas registered while the registry is up
    expected = {topic: len(records) for topic, records in sent.released.items() if topic.startswith(f"shared.{names['fraud']}.")}
    assert sum(expected.values()) > 50

    stack.embedded.registry.stop()
    sink = Sink(settings, recipient_plan(settings, charter, names["fraud"]), clickhouse_client, registry_client(settings))
    stop = threading.Event()
    runner = threading.Thread(target=sink.run, args=(stop,), daemon=True)
    try:
        sink.setup()
        runner.start()
        deadline = time.monotonic() + 30
        while sink.stats.retries < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sink.stats.retries >= 2 and sink.stats.landed == 0 and sink.stats.commits == 0, "it waits, commits nothing"
    finally:
        stack.embedded.registry.start()
    deadline = time.monotonic() + 90
    while sink.stats.landed < sum(expected.values()) and time.monotonic() < deadline:
        time.sleep(0.3)
    stop.set()
    runner.join(30)
    assert sink.stats.landed == sum(expected.values()) and sink.stats.dead_lettered == 0
    database = ddl.database_name(settings.clickhouse_database_prefix, names["fraud"])
    for topic, count in expected.items():
        table = ddl.table_name(topic.split(".", 2)[2])
        rows = clickhouse_client.query(f"SELECT count(), uniqExact(event_id) FROM {ddl.qualified(database, table)}").result_rows[0]
        assert tuple(rows) == (count, count), f"{table}: every row exactly once"
    letters = read_topic(settings, dlq_topic("sink"), lambda ms: False, timeout=3)
    assert not [m for m in letters if dict(m.headers() or []).get("error.source_topic", b"").decode() in expected], "nothing dead-lettered"

