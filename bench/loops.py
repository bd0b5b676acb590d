"""The baselines the processor is measured against, on events pre-produced through the SDK: the bare
loop (consume -> the processor's own `Router.route` -> produce), loops written by hand with no project
code but the policy engine (with and without the per-event audit record), and the broker's raw
pass-through. Each reads what is waiting, as the data plane does (`take`), and is bounded in time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from backbone.errors import BackboneError
from backbone.events.serde import registry_client
from backbone.kafka.compacted import CompactedTopicReader
from backbone.kafka.topics import AUDIT_TOPIC, CONSENT_TOPIC, Topics, shared_topic
from backbone.settings import Settings
from processors.app import Enforcement
from processors.dataplane import LINGER_MS
from processors.router import DLQ_TOPIC, Router
from producers.sdk import AgencyProducer, Delivery
from producers.synthetic import generate

BARE_PREFIX = "bench.bare."
PASSTHROUGH_TOPIC = "bench.passthrough"

Ends = dict[tuple[str, int], int]


def demo_records(seed: int, population: int, count: int) -> list[tuple[str, dict]]:
    """`count` events of the demo mix (every agency, consent changes included) about `population` people."""
    return list(generate(seed=seed, population=population, events=count))


class MixProducer:
    """One SDK producer per agency; remembers the end offset of every partition it wrote to."""

    def __init__(self, settings: Settings, agencies: set[str], on_sent: Callable[[Delivery], None] | None = None) -> None:
        self.ends: Ends = {}
        self._on_sent = on_sent
        self.producers = {name: AgencyProducer(name, settings, on_delivery=self._delivered) for name in sorted(agencies)}

    def _delivered(self, delivery: Delivery) -> None:
        if delivery.ok:
            key = (delivery.topic, delivery.partition)
            if delivery.offset + 1 > self.ends.get(key, 0):
                self.ends[key] = delivery.offset + 1

    def send(self, event_type: str, record: dict) -> None:
        self.producers[record["provider"]].send(event_type, record)

    def close(self) -> int:
        """Flush every producer (bounded); returns events acknowledged."""
        return sum(producer.close(timeout=60).delivered for producer in self.producers.values())


def pre_produce(settings: Settings, records: list[tuple[str, dict]]) -> tuple[Ends, float]:
    started = time.perf_counter()
    mix = MixProducer(settings, {record["provider"] for _, record in records})
    for event_type, record in records:
        mix.send(event_type, record)
    delivered = mix.close()
    assert delivered == len(records), f"{delivered} of {len(records)} events acknowledged"
    raw_ends = {tp: end for tp, end in mix.ends.items() if tp[0].startswith("raw.")}
    return raw_ends, time.perf_counter() - started


def produce_all(settings: Settings, records: Sequence[tuple[str, dict]]) -> tuple[MixProducer, float, float]:
    """(producers, first send, every event acknowledged) as perf_counter times."""
    producers = MixProducer(settings, {record["provider"] for _, record in records})
    started = time.perf_counter()
    for event_type, record in records:
        producers.send(event_type, record)
    delivered = producers.close()
    if delivered != len(records):
        raise BackboneError(f"{delivered} of {len(records)} events acknowledged by the broker")
    return producers, started, time.perf_counter()



# -- the loops ----------------------------------------------------------------------------------


def build_router(settings: Settings) -> tuple[Enforcement, Router]:
    """The Router exactly as a worker builds it, with the consent table read to its end."""
    enforcement = Enforcement(settings)
    enforcement.ensure_topics()
    router = Router(enforcement.catalog, enforcement.engine, enforcement.schemas, enforcement.keyring)
    router.prepare()
    reader = CompactedTopicReader(settings, CONSENT_TOPIC, enforcement.consent.apply_message, "bench-consent")
    reader.start()
    try:
        reader.wait_caught_up(settings.kafka_timeout_s * 6)
    finally:
        reader.stop()
    return enforcement, router


def output_topics(enforcement: Enforcement) -> list[str]:
    names = {AUDIT_TOPIC, DLQ_TOPIC}
    for agreement in enforcement.charter.agreements:
        names.update(shared_topic(agreement.recipient, event_type) for event_type in agreement.event_types)
    return sorted(names)


def take(consumer: Consumer, batch_size: int) -> list:
    """A batch as the data plane takes one: what is waiting (up to `batch_size`), else the first
    message to arrive within 0.1 s and what came with it. (librdkafka's consume(n, timeout) waits
    its whole timeout whenever fewer than n are waiting: a baseline reading that way would wait at
    every partial batch and look slower than the processor for no reason of its own.)"""
    messages = consumer.consume(batch_size, 0)
    if messages:
        return messages
    first = consumer.consume(1, 0.1)
    return first + consumer.consume(batch_size - 1, 0) if first and batch_size > 1 else first


def run_bare(settings: Settings, ends: Ends, max_seconds: float) -> tuple[float, int, int]:
    """(events/s, events routed, outputs produced): consume -> route -> produce, one flush at the end."""
    enforcement, router = build_router(settings)
    topics = Topics(settings)
    bare_topics = {name: BARE_PREFIX + name for name in output_topics(enforcement)}
    for name in bare_topics.values():
        topics.ensure(name)
    consumer = Consumer(settings.consumer_config(f"bench-bare-{time.monotonic_ns()}"))
    # The data plane's producer settings, so the ratio measures Faust, per-batch flush and commit only.
    producer = Producer(settings.producer_config(**{"linger.ms": LINGER_MS}))
    consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING) for topic, partition in ends])
    pending = dict(ends)
    delivered = failed = produced = routed = 0

    def count(error: KafkaError | None, _message: object) -> None:
        nonlocal delivered, failed
        if error is None:
            delivered += 1
        else:
            failed += 1

    route, produce, consent = router.route, producer.produce, enforcement.consent
    started: float | None = None
    deadline = time.monotonic() + max_seconds
    try:
        while pending and time.monotonic() < deadline:
            messages = take(consumer, settings.consumer_batch_size)
            if not messages:
                continue
            if started is None:
                started = time.perf_counter()
            now = datetime.now(UTC)
            for message in messages:
                if message.error() is not None:
                    continue
                topic = message.topic()
                for output in route(topic, message.key(), message.value(), message.headers(), consent, now):
                    target = bare_topics.get(output.topic)
                    if target is None:
                        target = bare_topics[output.topic] = BARE_PREFIX + output.topic
                        topics.ensure(target)
                    while True:
                        try:
                            produce(target, output.value, output.key, headers=output.headers, on_delivery=count)
                            break
                        except BufferError:
                            producer.poll(0.05)
                    produced += 1
                routed += 1
                tp = (topic, message.partition())
                if tp in pending and message.offset() + 1 >= pending[tp]:
                    del pending[tp]
            producer.poll(0)
        remaining = producer.flush(60)
        elapsed = time.perf_counter() - (started or time.perf_counter())
    finally:
        consumer.close()
    assert not pending, f"bare loop did not reach the end of {sorted(pending)} within {max_seconds:g}s"
    assert remaining == 0 and failed == 0 and delivered == produced, \
        f"bare loop: {delivered} of {produced} outputs acknowledged, {failed} failed"
    for name in bare_topics.values():  # memory storage keeps everything: free it
        topics.delete(name)
    return routed / elapsed, routed, produced


def run_handwritten(settings: Settings, ends: Ends, max_seconds: float, audit: bool, cpu: dict[str, float] | None = None,
                    same_outputs: bool = True) -> float:
    """events/s of a loop written by hand: fastavro decode with schemas fetched once, the policy
    engine, fastavro encode of the released records (and, with `audit`, one audit record per event
    listing its decisions and the subject's oversight pseudonym), librdkafka produce. No Router, no
    serde. `cpu`, if given, gets `us_per_event`: this process's CPU (every thread, librdkafka's too)
    per event.

    With `same_outputs` (the baseline the processor is held to) it delivers what the processor
    delivers, as the processor must: each released record to (a `bench.hand.` copy of) its
    recipient's shared topic, keyed by the subject's pseudonym, with the agreement header and the
    released timestamp, and each batch acknowledged (flush) before its offsets are committed.
    Without, the first baseline: every record unkeyed to one topic, one flush at the end, nothing
    committed (fewer, larger produce requests than any real processor could send)."""
    import io

    from fastavro import parse_schema, schemaless_reader, schemaless_writer

    from backbone.events.catalog import AUDIT_EVENT
    from backbone.keys.keyring import OVERSIGHT_DOMAIN
    from backbone.keys.pseudonym import token_function
    from backbone.policy.released import released_timestamp_ms

    enforcement, _ = build_router(settings)
    engine, consent, registry = enforcement.engine, enforcement.consent, registry_client(settings)
    oversight = token_function(enforcement.keyring, OVERSIGHT_DOMAIN)[0]
    subject_fields = {name: schema.subject_field for name, schema in enforcement.catalog.events.items()}
    topics = Topics(settings)
    run = time.monotonic_ns()
    target = f"bench.hand.{run}"
    created = [target]
    if same_outputs:  # created before the clock starts, as the processor's are
        created += [f"bench.hand.{run}.{name}" for name in output_topics(enforcement)]
    for name in created:
        topics.ensure(name)
    readers: dict[int, object] = {}
    # (agreement, version, event type) -> (wire header, parsed schema, shared topic copy, headers)
    writers: dict[tuple[str, int, str], tuple[bytes, object, str, list | None]] = {}
    audit_schema = parse_schema(enforcement.catalog.internal_schema(AUDIT_EVENT))
    consumer = Consumer(settings.consumer_config(f"bench-hand-{run}", **{"enable.auto.commit": False}))
    producer = Producer(settings.producer_config(**{"linger.ms": LINGER_MS}))
    consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING) for topic, partition in ends])
    pending, done, started = dict(ends), 0, None
    deadline = time.monotonic() + max_seconds
    try:
        while pending and time.monotonic() < deadline:
            messages = take(consumer, settings.consumer_batch_size)
            if messages and started is None:
                started, cpu_started = time.perf_counter(), time.process_time()
            now = datetime.now(UTC)
            offsets: dict[tuple[str, int], int] = {}
            for message in messages:
                if message.error() is not None:
                    continue
                value = message.value()
                schema_id = int.from_bytes(value[1:5], "big")
                if schema_id not in readers:
                    readers[schema_id] = parse_schema(json.loads(registry.get_schema(schema_id).schema_str))
                record = schemaless_reader(io.BytesIO(value[5:]), readers[schema_id], None)
                event_type = record["event_type"]
                decisions = engine.decide(record, consent, now)
                for decision in decisions:
                    if decision.permitted:
                        key = (decision.agreement_id, decision.agreement_version, event_type)
                        if key not in writers:
                            avro = engine.recipient_schema(decision.agreement_id, event_type, decision.agreement_version)
                            writers[key] = (b"\x00\x00\x00\x00\x01", parse_schema(avro),
                                            f"{target}.{shared_topic(decision.recipient, event_type)}" if same_outputs else target,
                                            [("agreement", f"{decision.agreement_id}@{decision.agreement_version}".encode())]
                                            if same_outputs else None)
                        header, parsed, topic, headers = writers[key]
                        buffer = io.BytesIO()
                        buffer.write(header)
                        released = decision.record
                        schemaless_writer(buffer, parsed, released)
                        if same_outputs:
                            _produce_all(producer, topic, buffer.getvalue(), decision.key.encode() if decision.key else None,
                                         headers, released_timestamp_ms(released.get("occurred_at")))
                        else:
                            _produce_all(producer, topic, buffer.getvalue())
                if audit:
                    subject = record.get(subject_fields[event_type]) if subject_fields.get(event_type) else None
                    buffer = io.BytesIO()
                    buffer.write(b"\x00\x00\x00\x00\x02")
                    schemaless_writer(buffer, audit_schema, {
                        "event_id": str(record["event_id"]), "event_type": event_type, "provider": record["provider"],
                        "subject_token": oversight(subject) if subject else None, "decided_at": now, "decisions": [
                            {"recipient": d.recipient, "agreement_id": d.agreement_id, "agreement_version": d.agreement_version,
                             "outcome": "permit" if d.permitted else d.reason, "key_ids": list(d.key_ids),
                             "recipient_event_id": d.record["event_id"] if d.record else None} for d in decisions]})
                    _produce_all(producer, target, buffer.getvalue())
                done += 1
                tp = (message.topic(), message.partition())
                offsets[tp] = message.offset() + 1
                if tp in pending and message.offset() + 1 >= pending[tp]:
                    del pending[tp]
            if same_outputs and offsets:  # at least once, as the data plane: acknowledged, then committed
                if producer.flush(60):
                    raise BackboneError("hand-written loop: a batch's outputs were not acknowledged within 60 s")
                consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False)
            producer.poll(0)
        producer.flush(60)
        elapsed = time.perf_counter() - (started or time.perf_counter())
        if cpu is not None and started is not None and done:
            cpu["us_per_event"] = (time.process_time() - cpu_started) / done * 1e6
    finally:
        consumer.close()
        for name in created:
            topics.delete(name)
    return done / elapsed if elapsed else 0.0


def _produce_all(producer: Producer, topic: str, value: bytes, key: bytes | None = None, headers: list | None = None,
                 timestamp: int = 0) -> None:
    while True:
        try:
            producer.produce(topic, value, key, headers=headers, timestamp=timestamp)
            return
        except BufferError:
            producer.poll(0.05)


def run_passthrough(settings: Settings, ends: Ends, max_seconds: float) -> float:
    """The broker's raw pass-through: consume -> produce of the same bytes, no transform; events/s."""
    topics = Topics(settings)
    topics.ensure(PASSTHROUGH_TOPIC)
    consumer = Consumer(settings.consumer_config(f"bench-pass-{time.monotonic_ns()}"))
    producer = Producer(settings.producer_config())
    consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING) for topic, partition in ends])
    pending = dict(ends)
    failed = count = 0

    def delivered(error: KafkaError | None, _message: object) -> None:
        nonlocal failed
        failed += error is not None

    started: float | None = None
    deadline = time.monotonic() + max_seconds
    try:
        while pending and time.monotonic() < deadline:
            messages = take(consumer, settings.consumer_batch_size)
            if messages and started is None:
                started = time.perf_counter()
            for message in messages:
                if message.error() is not None:
                    continue
                while True:
                    try:
                        producer.produce(PASSTHROUGH_TOPIC, message.value(), message.key(), on_delivery=delivered)
                        break
                    except BufferError:
                        producer.poll(0.05)
                count += 1
                tp = (message.topic(), message.partition())
                if tp in pending and message.offset() + 1 >= pending[tp]:
                    del pending[tp]
            producer.poll(0)
        remaining = producer.flush(60)
        elapsed = time.perf_counter() - (started or time.perf_counter())
    finally:
        consumer.close()
    if pending or remaining or failed:
        raise BackboneError(f"pass-through incomplete: {len(pending)} partitions unread, {remaining} unsent, {failed} failed")
    topics.delete(PASSTHROUGH_TOPIC)  # memory storage keeps everything: free it
    return count / elapsed
