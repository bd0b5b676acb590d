"""Processor workers under failure and scale-out: SIGKILL mid-stream, and two workers sharing the
raw partitions while each honours every subject's consent."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, TopicPartition

from backbone.events.catalog import CONSENT_EVENT
from backbone.events.serde import Decoder, registry_client
from backbone.kafka.topics import AUDIT_TOPIC, shared_topic
from backbone.settings import Settings
from producers import AgencyProducer, ConsentPublisher
from producers.synthetic import SyntheticStream
from tests.pipeline import AuditRecords, Worker, private_stack, read_topic
from tests.test_processor import decisions, reason, welfare_claim

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    with private_stack(tmp_path_factory.mktemp("workers"), partitions=4) as settings:
        yield settings


def produce_synthetic(settings: Settings, events: int, seed: int) -> dict[str, str]:
    """Events for every agency; returns event id -> event type."""
    producers: dict[str, AgencyProducer] = {}
    sent: dict[str, str] = {}
    try:
        for event_type, record in SyntheticStream(seed=seed, population=400, events=events):
            if event_type == CONSENT_EVENT:
                continue
            agency = event_type.split(".")[0]
            if agency not in producers:
                producers[agency] = AgencyProducer(agency, settings)
            sent[producers[agency].send(event_type, record)] = event_type
    finally:
        for producer in producers.values():
            producer.close()
    return sent


def audit_watermark(settings: Settings) -> int:
    consumer = Consumer(settings.consumer_config(f"watermark-{uuid.uuid4().hex}"))
    try:
        partitions = consumer.list_topics(AUDIT_TOPIC, timeout=10).topics[AUDIT_TOPIC].partitions
        return sum(consumer.get_watermark_offsets(TopicPartition(AUDIT_TOPIC, p), timeout=10)[1] for p in partitions)
    finally:
        consumer.close()


def test_sigkilled_worker_loses_nothing_after_restart(stack: Settings) -> None:
    sent = produce_synthetic(stack, events=12_000, seed=7)
    worker = Worker(stack, "killed").start()
    deadline = time.monotonic() + 60
    while audit_watermark(stack) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.kill()

    decoder = Decoder(registry_client(stack))
    decided_before_restart = AuditRecords(stack).event_ids(read_topic(stack, AUDIT_TOPIC, lambda ms: False, timeout=3))
    assert 0 < len(decided_before_restart & set(sent)) < len(sent), "the kill must land mid-stream"

    restarted = Worker(stack, "restarted").start()
    try:
        found = decisions(stack, set(sent), timeout=120)
    finally:
        restarted.stop()
    assert {event_id for event_id, _ in found} >= set(sent)  # every raw event has its decisions

    permitted: dict[str, set[str]] = {}
    for (event_id, recipient), record in found.items():
        if record["decision"] == "permit":  # the recipient received it under its own id for the event
            permitted.setdefault(shared_topic(recipient, sent[event_id]), set()).add(str(record["recipient_event_id"]))
    assert permitted, "the synthetic mix must include permitted events"
    for topic, event_ids in permitted.items():
        delivered = read_topic(stack, topic, lambda ms, ids=event_ids: {str(decoder(m.value()).record["event_id"]) for m in ms} >= ids)
        assert {str(decoder(m.value()).record["event_id"]) for m in delivered} >= event_ids, topic


def consumed_by(worker: Worker) -> int:
    counts = [int(n) for n in re.findall(r"'consumed': (\d+)", worker.log_path.read_text(errors="replace"))]
    return max(counts, default=0)


def test_two_workers_share_partitions_and_each_honours_every_subjects_consent(stack: Settings) -> None:
    first = Worker(stack, "first").start()
    second = Worker(stack, "second").start()
    try:
        subjects = [str(uuid.uuid4().int)[:9] for _ in range(40)]
        with ConsentPublisher(stack) as consent:
            for subject in subjects:
                consent.grant(subject, "scientific_research")
        time.sleep(3)
        with AgencyProducer("welfare", stack) as producer:
            granted = {producer.send("welfare.benefit_claimed", welfare_claim(s)) for s in subjects}
        found = decisions(stack, granted)
        assert {reason(found, e, "research") for e in granted} == {"permit"}

        with ConsentPublisher(stack) as consent:
            for subject in subjects:
                consent.withdraw(subject, "scientific_research")
        time.sleep(3)
        with AgencyProducer("welfare", stack) as producer:
            withdrawn = {producer.send("welfare.benefit_claimed", welfare_claim(s)) for s in subjects}
        found = decisions(stack, withdrawn)
        assert {reason(found, e, "research") for e in withdrawn} == {"consent_withdrawn"}

        deadline = time.monotonic() + 30  # workers log their counts every 10 s
        while (consumed_by(first) == 0 or consumed_by(second) == 0) and time.monotonic() < deadline:
            time.sleep(1)
        assert consumed_by(first) > 0 and consumed_by(second) > 0, "both workers must have taken partitions"
    finally:
        first.stop()
        second.stop()
