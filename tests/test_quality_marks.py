"""Cross-provider consistency survives a restart (issue 32): the marks a worker makes (a subject's
registered death, by oversight pseudonym and month, never the national id) go to the compacted
`quality.marks` topic, and a restarted worker reads them back before it checks a claim."""

from __future__ import annotations

import random
import tracemalloc
import uuid
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace

import pytest
from confluent_kafka import Producer

from backbone.control.erasure import ErasureRecord, oversight_tokens
from backbone.events.catalog import load_catalog
from backbone.events.serde import LocalSchemas, encoder_for
from backbone.kafka.compacted import CompactedTopicReader
from backbone.kafka.topics import QUALITY_MARKS_TOPIC, Topics, eager_compaction, raw_topic
from backbone.keys.keyring import OVERSIGHT_DOMAIN, Keyring
from backbone.policy.agreements import load_agreements
from backbone.policy.decision import NoConsent
from backbone.policy.engine import PolicyEngine
from backbone.quality.checks import QualityMonitor
from backbone.quality.contract import QualityContract, QualitySection, load_quality
from backbone.quality.marks import mark_applier, mark_record, read_mark
from backbone.settings import PROJECT_ROOT, Settings
from processors.erasure import ErasureTable
from processors.router import Router
from producers.synthetic.samples import sample_event

NOW = datetime(2026, 12, 7, 10, 30, tzinfo=UTC)
CLAIM, DEATH = "welfare.benefit_claimed", "registry.death_registered"
RULE = {"name": "claim_after_death", "after": DEATH, "at": "date_of_death", "field": "period"}
CONTRACT = QualityContract(CLAIM, "test", QualitySection.model_validate({"consistency": {"rules": [RULE]}}))
SUBJECTS = {CLAIM: "national_id", DEATH: "national_id"}


def monitor() -> QualityMonitor:
    found = QualityMonitor([CONTRACT])
    found.bind(SUBJECTS, lambda subject: f"k1.{subject[::-1]}")
    return found


def inconsistent(found: QualityMonitor, subject: str, period: str) -> int:
    found.observe(CLAIM, {"national_id": subject, "period": period}, NOW)
    return sum(w.inconsistent["claim_after_death"] for w in found.closed(NOW + timedelta(hours=1)))


def test_a_restarted_worker_given_the_published_marks_still_flags_a_claim_after_an_earlier_death() -> None:
    before = monitor()
    before.observe(DEATH, {"national_id": "123456782", "date_of_death": date(2026, 5, 14)}, NOW)
    published = before.take_marks()
    assert published == [(DEATH, "date_of_death", "k1.287654321", 2026 * 12 + 4)]
    assert before.take_marks() == []  # each mark is published once
    before.observe(DEATH, {"national_id": "123456782", "date_of_death": date(2026, 5, 14)}, NOW)
    assert before.take_marks() == []  # the same death again: nothing new
    records = [mark_record(*mark) for mark in published]
    assert all(b"123456782" not in key + value for key, value in records)  # the pseudonym, never the id

    assert inconsistent(monitor(), "123456782", "2026-07") == 0  # restarted with nothing: the death is forgotten
    after = monitor()
    for key, value in records:
        after.remember(*read_mark(key, value))
    assert inconsistent(after, "123456782", "2026-07") == 1
    assert after.take_marks() == []  # marks read back are not published again
    after.remember(*read_mark(records[0][0], None))  # a tombstone forgets the mark
    assert inconsistent(after, "123456782", "2026-08") == 0


@pytest.mark.parametrize(("key", "value", "says"), [
    (b"registry.death_registered|date_of_death", b"24316", "is not <event type>|<field>|<pseudonym>"),
    (b"registry.death_registered||k1.x", b"24316", "empty part"),
    (b"registry.death_registered|date_of_death|k1.x", b"1980-05", "not a month index"),
    (b"registry.death_registered|date_of_death|k1.x", b"99999999", "not a month index"),
    (b"\xff|a|b", b"1", "is not <event type>"),
])
def test_a_record_that_is_not_a_mark_is_skipped_with_its_offset_only(key: bytes, value: bytes, says: str,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ValueError, match=says):
        read_mark(key, value)
    found = monitor()
    message = SimpleNamespace(key=lambda: key, value=lambda: value, offset=lambda: 7, partition=lambda: 0)
    mark_applier(found.remember, __import__("logging").getLogger("test"))(message)
    found.flush()
    assert "offset 7" in caplog.text and value.decode(errors="replace") not in caplog.text.replace("offset 7", "")
    assert found.marking[DEATH][0][1] == {}


def test_memory_per_mark() -> None:
    """What a mark costs in a worker (the README's figure): a pseudonym of the oversight key's form and
    a month, in the monitor's dict."""
    found = monitor()
    (_, marks), = found.marking[DEATH]
    rng = random.Random(5)
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    for n in range(20_000):  # each token made as the router makes one: a new string kept by the mark
        found.remember(DEATH, "date_of_death", f"k1.{rng.getrandbits(128):032x}"[:25], 2026 * 12 + n % 12)
    found.flush()
    per_mark = (tracemalloc.get_traced_memory()[0] - start) / 20_000
    tracemalloc.stop()
    assert len(marks) == 20_000
    assert per_mark < 200, per_mark  # MAX_MARKS a rule: at most ~200 MB
    print(f"memory per mark: {per_mark:.0f} bytes")


def test_a_worker_restarted_on_a_real_broker_reads_the_marks_back(settings: Settings, unique: str) -> None:
    """The router publishes its marks with the batch's outputs; a new router (a restarted worker, the
    same oversight key) reads the compacted topic in full before it checks the claim."""
    catalog = load_catalog(PROJECT_ROOT / "schemas")
    charter = load_agreements(PROJECT_ROOT / "agreements", catalog)
    keyring = Keyring.for_charter(charter)
    contracts = load_quality(PROJECT_ROOT / "schemas", catalog)

    def worker() -> Router:
        router = Router(catalog, PolicyEngine(charter, keyring), LocalSchemas(), keyring)
        router.quality = QualityMonitor(contracts.values())
        return router

    def route(router: Router, event_type: str, **fields: object) -> None:
        rng = random.Random(fields.__repr__())
        record = {**sample_event(catalog.events[event_type], rng), **fields,
                  "event_id": str(uuid.UUID(int=rng.getrandbits(128))), "occurred_at": NOW}
        encode = encoder_for(router.schemas, f"{raw_topic(event_type)}-value", catalog.events[event_type].avro)
        router.route(raw_topic(event_type), b"k", encode(record), None, NoConsent(), NOW)

    subject = "123456782"
    first = worker()
    route(first, DEATH, national_id=subject, date_of_death=date(2026, 5, 14))
    marks = [o for o in first.quality_outputs(NOW) if o.topic == QUALITY_MARKS_TOPIC]
    assert len(marks) == 1 and subject.encode() not in marks[0].key + marks[0].value
    topic = f"quality.marks.{unique}"  # the test's own copy of quality.marks
    Topics(settings).ensure(topic, config=eager_compaction())
    producer = Producer(settings.producer_config())
    for output in marks:
        producer.produce(topic, output.value, output.key)
    assert producer.flush(10) == 0

    restarted = worker()
    reader = CompactedTopicReader(settings, topic, mark_applier(restarted.quality.remember, __import__("logging").getLogger("t")),
                                  "quality-marks")
    reader.start()
    try:
        reader.wait_caught_up(30)
    finally:
        reader.stop()
    route(restarted, CLAIM, national_id=subject, period="2026-07")
    window, = [w for w in restarted.quality.closed(NOW + timedelta(hours=1)) if w.event_type == CLAIM]
    assert window.inconsistent == {"claim_after_death": 1}


def test_an_erased_subjects_marks_are_forgotten_tombstoned_and_never_made_again() -> None:
    """`backbone erase`: the worker's erasure table hands the erased tokens to the monitor, which drops
    the subject's marks, tombstones them on `quality.marks` (so no restarted worker reads them back)
    and does not mark the subject again, from its own events or from marks another worker publishes."""
    keyring = Keyring.generate(domains=[OVERSIGHT_DOMAIN])
    found = QualityMonitor([CONTRACT])
    found.bind(SUBJECTS, lambda subject: oversight_tokens(keyring, subject)[0])
    table = ErasureTable(keyring)
    found.erased, table.on_tokens = table.holds, found.forget_subjects
    death = {"national_id": "123456782", "date_of_death": date(2026, 5, 14)}
    found.observe(DEATH, death, NOW)
    [(_, _, token, _)] = found.take_marks()
    assert inconsistent(found, "123456782", "2026-07") == 1

    tokens = oversight_tokens(keyring, "123456782")
    table.apply(tokens[0].encode(), ErasureRecord(tokens[0], tuple(tokens), NOW, "dpo", "a-1", ()).to_json())
    assert found.take_marks() == [(DEATH, "date_of_death", token, None)]
    assert mark_record(DEATH, "date_of_death", token, None)[1] is None  # published as a tombstone
    assert inconsistent(found, "123456782", "2026-08") == 0
    found.observe(DEATH, death, NOW)  # a later death event of the erased subject marks nothing
    found.remember(DEATH, "date_of_death", token, 2026 * 12 + 4)  # nor a mark another worker published before
    assert found.take_marks() == []
    assert inconsistent(found, "123456782", "2026-09") == 0
