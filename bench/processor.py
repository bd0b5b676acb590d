"""Events per second through the processor for the demo's event mix, beside a bare confluent-kafka
consume -> `Router.route` -> produce loop and hand-written loops in the same run, what sealing the
audit trail costs, how two workers compare with one, and end-to-end latency from produce to
shared-topic delivery at a steady offered load. `--soak` instead runs the worker for minutes at a
steady load and follows the memory of every process.

    python -m bench.processor [--events 50000] [--rate 5000] [--seconds 15] [--partitions 6]
                              [--workers 2] [--checkpoint-rounds 3] [--profile DIR]
    python -m bench.processor --soak [--soak-seconds 600] [--soak-rate 2000] [--soak-interval 10]

Starts a private embedded broker and registry in a temporary directory, then:
1. pre-produces `--events` synthetic events (every agency, consent changes included) through the SDK;
2. bare loop: all raw partitions assigned from the beginning, each message routed exactly as the
   processor routes it (same Router, engine, keyring, consent table), outputs produced to
   `bench.bare.*` copies of the output topics (deleted afterwards), one flush at the end; then the
   hand-written loops (fastavro + the policy engine + librdkafka, with and without the per-event
   audit record) on the same events; all take batches as the data plane does (what is waiting);
3. checkpoints: the processor's `DataPlane` in this process (same settings, its own consumer group,
   from the first batch to the last commit), sealing each batch with a signed checkpoint and
   without (`checkpoints=lambda: None`: audit records produced unsealed), both in each of
   `--checkpoint-rounds` rounds (order alternating); the cost is the median of the rounds' ratios,
   in events/s and in CPU per event; goal: sealing costs at most 5%;
4. processor: a real `backbone process` worker; its rate is raw events decided / time until the
   group's committed offsets reach the ends of every raw partition (from the first commit, so the
   consumer-group join is left out, as the bare loop's assignment is; the rate from "enforcing" is
   printed beside it). `--profile DIR` records the worker with py-spy meanwhile (`bench.profile`);
5. latency: `--rate` events/s for `--seconds` through the SDK while a reader assigned to every
   `shared.*` partition records receive time - send time per released record, matched by event id;
6. workers (`--workers 2`): the same events pre-produced again for one worker, then again for two
   worker processes started together in the processor's consumer group; the ratio is reported, not
   targeted (two cores shared with the broker).
Targets: processor >= 50% of the bare loop and >= 80% of the hand-written no-audit loop; p99
produce -> shared < 500 ms at the offered load.
Soak: `--soak-rate` events/s for `--soak-seconds` through one worker; every `--soak-interval` s the
RSS of broker, registry, worker and this process, events decided and lag; growth per process from
the first minute's median to the last minute's (goal: flat within 10%). The run ends after
`--soak-seconds` + a margin whatever happens.
Results go to `bench/results/processor-<timestamp>.json` (`processor-soak-<timestamp>.json`).
Every loop is bounded in count and time; every process started here stops on every exit path.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, Producer, TopicPartition
from rich.console import Console
from rich.table import Table

from app.local import ProcessorWorker, embedded_settings
from backbone.events.catalog import CONSENT_EVENT
from backbone.events.serde import Decoder, registry_client
from backbone.kafka.compacted import CompactedTopicReader
from backbone.kafka.topics import AUDIT_TOPIC, CONSENT_TOPIC, Topics, shared_topic
from backbone.settings import Settings
from bench import profile as spy
from bench.processes import clean_stop, cpu_seconds, rss_mb, stack_children
from processors.app import APP_ID, Enforcement
from processors.dataplane import LINGER_MS, DataPlane
from processors.router import DLQ_TOPIC, Router
from producers.sdk import AgencyProducer, Delivery
from producers.synthetic import generate

RATIO_TARGET = 0.5
HANDWRITTEN_TARGET = 0.8  # processor / hand-written no-audit loop (issue 16)
P99_TARGET_MS = 500.0
CHECKPOINT_TARGET = 0.95  # sealing may cost at most 5% of the data plane's events/s (issue 17)
SOAK_GROWTH_TARGET_PCT = 10.0
SOAK_MARGIN_S = 240.0  # start-up, drain and report on top of --soak-seconds, then the run is stopped
DATAPLANE_GROUP = f"{APP_ID}-dataplane"
BARE_PREFIX = "bench.bare."
RESULTS_DIR = Path(__file__).resolve().parent / "results"
console = Console(width=max(Console().width, 120))  # the tables stay readable when piped

Ends = dict[tuple[str, int], int]


@dataclass(slots=True)
class Results:
    events: int = 0
    consent_events: int = 0
    partitions: int = 0
    batch_size: int = 0
    produce_s: float = 0.0
    bare_events_per_s: float = 0.0
    bare_outputs: int = 0
    processor_events_per_s: float = 0.0
    processor_events_per_s_from_ready: float = 0.0
    ratio: float = 0.0
    worker_rss_mb_after_throughput: float | None = None
    offered_rate: float = 0.0
    offered_events: int = 0
    latency_samples: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    routed_ms: dict[str, float] = field(default_factory=dict)
    cpu_during_load: dict[str, float] = field(default_factory=dict)
    worker_rss_mb_after_latency: float | None = None
    notes: list[str] = field(default_factory=list)
    # honest baselines (issue 16): hand-written loops with no project code but the policy engine
    handwritten_loop_events_per_s: float = 0.0  # same work as the processor: one audit record per event
    handwritten_no_audit_events_per_s: float = 0.0
    router_loop_events_per_s: float = 0.0  # = bare_events_per_s: the project's Router in a bare loop
    offered_events_per_s: float = 0.0
    p50_produce_to_shared_ms: float | None = None
    p99_produce_to_shared_ms: float | None = None
    p99_produce_to_queryable_ms: float | None = None  # measured by bench.e2e (sinks into ClickHouse)
    # issue 17: the data plane in this process, sealing each batch and not (best of the rounds)
    dataplane_in_process_events_per_s: float = 0.0
    processor_no_checkpoints_events_per_s: float = 0.0  # the same data plane, in process, unsealed
    # with / without checkpoints, events/s: the median of the rounds' ratios (each round runs both back
    # to back, so a change in the machine's load falls on both; best-of each apart would pair two rounds)
    checkpoint_cost_ratio: float = 0.0
    checkpoint_cpu_ratio: float = 0.0  # the same from CPU µs per event, without / with: less disturbed by other work
    checkpoint_rounds: list[dict[str, float]] = field(default_factory=list)
    checkpoints_sealed: int = 0  # by one sealed round
    # issue 16: one worker, then two in the same consumer group, each on the same events pre-produced again
    one_worker_events_per_s: float | None = None
    two_workers_events_per_s: float | None = None
    two_workers_ratio: float | None = None
    two_workers_partitions: list[int] | None = None  # raw partitions held by each member, if the broker says
    one_worker_cpu_s: list[float] | None = None  # CPU seconds of the worker while it decided the events
    two_workers_cpu_s: list[float] | None = None  # of each of the two: both working, and how evenly
    profile: dict | None = None  # bench.profile summary of the worker during the throughput run


def _records(seed: int, population: int, count: int) -> list[tuple[str, dict]]:
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


# -- bare loop ----------------------------------------------------------------------------------


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


def run_handwritten(settings: Settings, ends: Ends, max_seconds: float, audit: bool) -> float:
    """events/s of a loop written by hand: fastavro decode with schemas fetched once, the policy
    engine, fastavro encode of the released records (and, with `audit`, one audit record per event
    listing its decisions), librdkafka produce, one flush at the end. No Router, no serde."""
    import io

    from fastavro import parse_schema, schemaless_reader, schemaless_writer

    from backbone.events.catalog import AUDIT_EVENT

    enforcement, _ = build_router(settings)
    engine, consent, registry = enforcement.engine, enforcement.consent, registry_client(settings)
    topics = Topics(settings)
    target = f"bench.hand.{time.monotonic_ns()}"
    topics.ensure(target)
    readers: dict[int, object] = {}
    writers: dict[tuple[str, int, str], tuple[bytes, object]] = {}
    audit_schema = parse_schema(enforcement.catalog.internal_schema(AUDIT_EVENT))
    consumer = Consumer(settings.consumer_config(f"bench-hand-{time.monotonic_ns()}"))
    producer = Producer(settings.producer_config(**{"linger.ms": LINGER_MS}))
    consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING) for topic, partition in ends])
    pending, done, started = dict(ends), 0, None
    deadline = time.monotonic() + max_seconds
    try:
        while pending and time.monotonic() < deadline:
            messages = take(consumer, settings.consumer_batch_size)
            if messages and started is None:
                started = time.perf_counter()
            now = datetime.now(UTC)
            for message in messages:
                if message.error() is not None:
                    continue
                value = message.value()
                schema_id = int.from_bytes(value[1:5], "big")
                if schema_id not in readers:
                    readers[schema_id] = parse_schema(json.loads(registry.get_schema(schema_id).schema_str))
                record = schemaless_reader(io.BytesIO(value[5:]), readers[schema_id], None)
                decisions = engine.decide(record, consent, now)
                for decision in decisions:
                    if decision.permitted:
                        key = (decision.agreement_id, decision.agreement_version, record["event_type"])
                        if key not in writers:
                            avro = engine.recipient_schema(decision.agreement_id, record["event_type"], decision.agreement_version)
                            writers[key] = (b"\x00\x00\x00\x00\x01", parse_schema(avro))
                        header, parsed = writers[key]
                        buffer = io.BytesIO()
                        buffer.write(header)
                        schemaless_writer(buffer, parsed, decision.record)
                        _produce_all(producer, target, buffer.getvalue())
                if audit:
                    buffer = io.BytesIO()
                    buffer.write(b"\x00\x00\x00\x00\x02")
                    schemaless_writer(buffer, audit_schema, {
                        "event_id": str(record["event_id"]), "event_type": record["event_type"], "provider": record["provider"],
                        "subject_token": None, "decided_at": now, "decisions": [
                            {"recipient": d.recipient, "agreement_id": d.agreement_id, "agreement_version": d.agreement_version,
                             "outcome": "permit" if d.permitted else d.reason, "key_ids": list(d.key_ids),
                             "recipient_event_id": d.record["event_id"] if d.record else None} for d in decisions]})
                    _produce_all(producer, target, buffer.getvalue())
                done += 1
                tp = (message.topic(), message.partition())
                if tp in pending and message.offset() + 1 >= pending[tp]:
                    del pending[tp]
            producer.poll(0)
        producer.flush(60)
        elapsed = time.perf_counter() - (started or time.perf_counter())
    finally:
        consumer.close()
        topics.delete(target)
    return done / elapsed if elapsed else 0.0


def _produce_all(producer: Producer, topic: str, value: bytes) -> None:
    while True:
        try:
            producer.produce(topic, value)
            return
        except BufferError:
            producer.poll(0.05)


# -- processor ----------------------------------------------------------------------------------


def committed_total(consumer: Consumer, partitions: list[TopicPartition], ends: Ends, timeout: float) -> int:
    """Raw events the processor has committed (capped at each partition's end)."""
    total = 0
    for tp in consumer.committed(partitions, timeout=timeout):
        if tp.offset >= 0:
            total += min(tp.offset, ends[(tp.topic, tp.partition)])
    return total


def start_together(workers: list[ProcessorWorker]) -> None:
    """Start every worker at once (each waits for its own "enforcing"), so they join the consumer
    group together rather than one taking every partition and the next forcing a rebalance."""
    errors: list[BaseException] = []

    def start(worker: ProcessorWorker) -> None:
        try:
            worker.start()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(worker,), name=f"bench-start-{index}", daemon=True)
               for index, worker in enumerate(workers)]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join(timeout=120)
    finally:
        # On Ctrl-C the caller stops the workers: first let each start() have spawned its child.
        deadline = time.monotonic() + 5
        while any(t.is_alive() and w.pid is None for t, w in zip(threads, workers)) and time.monotonic() < deadline:
            time.sleep(0.05)
    if errors:
        raise errors[0]
    if any(thread.is_alive() for thread in threads):
        raise AssertionError("a worker was not ready within 120 s")


def run_processor(settings: Settings, worker: ProcessorWorker | list[ProcessorWorker], ends: Ends, max_seconds: float,
                  base: Ends | None = None, on_ready: Callable[[], None] | None = None) -> tuple[float, float, list[float]]:
    """(events/s from the first commit, events/s from "enforcing", CPU seconds of each worker
    meanwhile) until every raw partition is committed to its end; `worker` may be several, started
    together in the processor's group. `base`: offsets the group had already committed (a second
    pre-produced batch)."""
    workers = worker if isinstance(worker, list) else [worker]
    base = base or {}
    target = sum(end - base.get(tp, 0) for tp, end in ends.items())
    partitions = [TopicPartition(topic, partition) for topic, partition in ends]
    watcher = Consumer(settings.consumer_config(DATAPLANE_GROUP))  # never subscribes: only reads the group's offsets
    already = sum(min(offset, ends[tp]) for tp, offset in base.items() if tp in ends)
    try:
        start_together(workers)
        ready = time.perf_counter()
        cpu_at_ready = [cpu_seconds(each.pid) or 0.0 if each.pid else 0.0 for each in workers]
        if on_ready is not None:
            on_ready()
        first: tuple[float, int] | None = None
        deadline = time.monotonic() + max_seconds
        done = 0
        while time.monotonic() < deadline:
            done = committed_total(watcher, partitions, ends, settings.kafka_timeout_s) - already
            now = time.perf_counter()
            if done and first is None:
                first = (now, done)
            if done >= target:
                break
            for each in workers:
                if not each.alive():
                    raise AssertionError(f"worker exited: {each.tail()}")
            time.sleep(0.05)
        finished = time.perf_counter()
        cpu = [(cpu_seconds(each.pid) or 0.0) - at if each.pid else 0.0 for each, at in zip(workers, cpu_at_ready)]
    finally:
        watcher.close()
    assert done >= target, f"processor committed {done} of {target} raw events within {max_seconds:g}s"
    assert first is not None
    steady = (target - first[1]) / (finished - first[0]) if finished > first[0] and target > first[1] else float("nan")
    return steady, target / (finished - ready), cpu


def group_committed(settings: Settings, partitions: list[tuple[str, int]]) -> Ends:
    """The processor group's committed offsets of `partitions` (0 where none)."""
    watcher = Consumer(settings.consumer_config(DATAPLANE_GROUP))
    try:
        committed = watcher.committed([TopicPartition(t, p) for t, p in partitions], timeout=settings.kafka_timeout_s)
    finally:
        watcher.close()
    return {(tp.topic, tp.partition): max(0, tp.offset) for tp in committed}


def group_assignment(settings: Settings) -> list[int] | None:
    """Raw partitions held by each member of the processor's group, or None if the broker does not
    say (Tansu 0.6 answers DescribeGroups with no members)."""
    from confluent_kafka.admin import AdminClient

    try:
        admin = AdminClient(settings.kafka_config())
        described = admin.describe_consumer_groups([DATAPLANE_GROUP], request_timeout=settings.kafka_timeout_s)
        group = described[DATAPLANE_GROUP].result(timeout=settings.kafka_timeout_s)
        held = sorted((sum(1 for tp in member.assignment.topic_partitions if tp.topic.startswith("raw."))
                       for member in group.members), reverse=True)
        return held or None
    except Exception:  # noqa: BLE001 - a figure for the report only
        return None


def run_workers(settings: Settings, records: list[tuple[str, dict]], count: int, max_seconds: float,
                batch_size: int | None) -> tuple[float, list[float], list[int] | None]:
    """events/s of `count` worker processes started together in the processor's consumer group, on
    `records` pre-produced again while no worker runs (the group's committed offsets are the base);
    the CPU seconds each worker spent meanwhile (do both work, and how evenly); the raw partitions
    each member held, if the broker says."""
    ends, _ = pre_produce(settings, [(event_type, dict(record, event_id=None)) for event_type, record in records])
    base = group_committed(settings, list(ends))
    extra = {"consumer_batch_size": str(batch_size)} if batch_size else {}
    workers = [ProcessorWorker(settings, f"bench-workers-{count}-{index}", **extra) for index in range(count)]
    try:
        rate, _, cpu = run_processor(settings, workers, ends, max_seconds, base=base)
        return rate, cpu, group_assignment(settings)
    finally:
        for worker in workers:
            worker.stop()


# -- the data plane in this process, with and without checkpoints ---------------------------------


def run_dataplane(settings: Settings, ends: Ends, max_seconds: float, sealed: bool) -> tuple[float, float, int]:
    """(events/s, CPU µs per event, checkpoints sealed) of the processor's `DataPlane` in this
    process, from the start of its first batch to the commit of the last, reading `ends` with a
    consumer group of its own. The CPU time is this process's (every thread: librdkafka's too;
    the rest of the benchmark sleeps meanwhile), which other work on the machine disturbs less.
    `sealed=False` passes `checkpoints=lambda: None`: the same work, audit records produced unsealed.
    The same Router, engine, keyring and consent table as a worker builds; outputs go to the real
    output topics (the audit records of a sealed round to its own writer's chain)."""
    enforcement, router = build_router(settings)
    target = sum(ends.values())
    first: list[float] = []

    def before_batch() -> None:
        if not first:
            first.extend((time.perf_counter(), time.process_time()))

    plane = DataPlane(settings, router, enforcement.consent, group_id=f"bench-dataplane-{time.monotonic_ns()}",
                      before_batch=before_batch, checkpoints=None if sealed else (lambda: None))
    plane.start()
    try:
        deadline = time.monotonic() + max_seconds
        while plane.consumed < target and time.monotonic() < deadline:
            if plane.error is not None or not plane.alive:
                raise AssertionError(f"data plane stopped: {plane.error}")
            time.sleep(0.005)
        finished, cpu = time.perf_counter(), time.process_time()
    finally:
        plane.stop()
    assert plane.consumed >= target, f"data plane decided {plane.consumed} of {target} raw events within {max_seconds:g}s"
    return target / (finished - first[0]), (cpu - first[1]) / target * 1e6, plane.checkpoints_sealed


def run_checkpoint_cost(settings: Settings, ends: Ends, max_seconds: float, rounds: int) -> list[dict[str, float]]:
    """Alternating sealed / unsealed data-plane runs (the order flips each round, so a drift in the
    machine's load falls on both); one dict per round."""
    out: list[dict[str, float]] = []
    for index in range(rounds):
        figures: dict[str, float] = {}
        for sealed in ((True, False) if index % 2 == 0 else (False, True)):
            rate, cpu_us, checkpoints = run_dataplane(settings, ends, max_seconds, sealed)
            name = "with_checkpoints" if sealed else "without_checkpoints"
            figures[name], figures[f"{name}_cpu_us_per_event"] = rate, cpu_us
            if sealed:
                figures["checkpoints_sealed"] = checkpoints
        console.print(f"  round {index + 1}: with checkpoints {figures['with_checkpoints']:,.0f} events/s "
                      f"({figures['with_checkpoints_cpu_us_per_event']:,.1f} CPU µs/event), without "
                      f"{figures['without_checkpoints']:,.0f} events/s ({figures['without_checkpoints_cpu_us_per_event']:,.1f})")
        out.append(figures)
    return out


# -- latency ------------------------------------------------------------------------------------


class SharedReader:
    """Every `shared.*` partition from its end; receive time - send time per released record, by event id."""

    def __init__(self, settings: Settings, sent: dict[str, float]) -> None:
        self.settings = settings
        self.sent = sent
        self.latencies_ms: list[float] = []
        self.routed_ms: list[float] = []  # send -> the processor's produce call (the output's CreateTime)
        self.unmatched = 0
        self.last_seen = time.time()
        self._stop = threading.Event()
        # fetch.wait.max.ms low so the reader measures the processor, not its own long poll.
        self._consumer = Consumer(settings.consumer_config(f"bench-latency-{time.monotonic_ns()}", **{"fetch.wait.max.ms": 10}))
        metadata = self._consumer.list_topics(timeout=settings.kafka_timeout_s)
        self._consumer.assign([TopicPartition(name, p, OFFSET_END) for name, topic in metadata.topics.items()
                               if name.startswith("shared.") for p in topic.partitions])
        self._decode = Decoder(registry_client(settings))
        self._sliced: dict[bytes, bool] = {}  # schema id -> whether the event id is read straight from the bytes
        self._thread = threading.Thread(target=self._run, name="bench-shared-reader", daemon=True)

    def start(self, settle_s: float = 1.0) -> None:
        self._thread.start()
        time.sleep(settle_s)  # positions resolve to the end before the load starts

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._consumer.close()

    def event_id(self, value: bytes) -> str:
        """The record's event id. Released records start with it (a 36-character uuid string: length
        byte 72, then the text); that is checked once per schema id against a full decode, and a
        schema laid out otherwise is always decoded, so the reader stays cheap beside the processor."""
        schema_id = value[1:5]
        sliced = self._sliced.get(schema_id)
        if sliced is None:
            decoded = str(self._decode(value).record["event_id"])
            sliced = self._sliced[schema_id] = len(value) > 42 and value[5] == 72 and value[6:42].decode() == decoded
            return decoded
        return value[6:42].decode() if sliced else str(self._decode(value).record["event_id"])

    def _run(self) -> None:
        consume, sent, out, routed = self._consumer.consume, self.sent, self.latencies_ms, self.routed_ms
        while not self._stop.is_set():
            messages = consume(1000, 0.05)
            received = time.time()
            for message in messages:
                if message.error() is not None:
                    continue
                event_id = self.event_id(message.value())
                at = sent.get(event_id)
                if at is None:
                    self.unmatched += 1
                    continue
                out.append((received - at) * 1000)
                routed.append(message.timestamp()[1] - at * 1000)
                self.last_seen = received


def cpu_ticks(pid: int | None = None) -> tuple[int, int]:
    """(busy, total) clock ticks of the machine, or (utime + stime, 0) of process `pid`."""
    if pid is not None:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12]), 0
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values) - values[3] - values[4], sum(values)


def recipient_ids(settings: Settings, recipient: str | None = None) -> dict[str, list[Callable[[str], str]]]:
    """Per event type, the functions giving each recipient's own id for a source event id (derived
    under the recipient's domain key): what lets a reader of `shared.*` (or of a recipient's tables)
    match a released record back to the send time of its source event. Only `recipient`'s if given."""
    from backbone.events.catalog import load_catalog
    from backbone.keys.keyring import OVERSIGHT_DOMAIN, Keyring
    from backbone.keys.pseudonym import event_id_function
    from backbone.policy.agreements import load_agreements

    keyring = Keyring.open(settings)
    charter = load_agreements(settings.agreements_dir, load_catalog(settings.schemas_dir))
    derive: dict[str, list[Callable[[str], str]]] = {}
    for agreement in charter.agreements:
        if recipient is not None and agreement.recipient != recipient:
            continue
        function = event_id_function(keyring, agreement.domain or OVERSIGHT_DOMAIN, agreement.recipient)
        for event_type in agreement.event_types:
            derive.setdefault(event_type, []).append(function)
    return derive


def run_latency(settings: Settings, worker: ProcessorWorker, rate: float, seconds: float, seed: int,
                population: int) -> tuple[float, int, SharedReader, dict[str, float]]:
    """(offered events/s, events sent, the reader holding the latencies, CPU use during the load)."""
    count = int(rate * seconds)
    records = _records(seed, population, count)
    sent: dict[str, float] = {}
    derive = recipient_ids(settings)
    mix = MixProducer(settings, {record["provider"] for _, record in records})
    reader = SharedReader(settings, sent)
    reader.start()
    step = max(1, int(rate / 200))  # pace in batches of 5 ms worth of events
    try:
        started = time.perf_counter()
        machine, process = cpu_ticks(), cpu_ticks(worker.pid)
        for index in range(0, len(records), step):
            ahead = started + index / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
            for event_type, record in records[index:index + step]:
                mix.send(event_type, record)  # fills event_id when missing
                at = time.time()  # wall clock: comparable with the outputs' CreateTime
                for recipient_id in derive.get(event_type, ()):
                    sent[recipient_id(record["event_id"])] = at
            for producer in mix.producers.values():
                producer.poll(0)
        elapsed = time.perf_counter() - started
        offered = len(records) / elapsed
        machine_now, process_now = cpu_ticks(), cpu_ticks(worker.pid)
        hz = os.sysconf("SC_CLK_TCK")
        cpu = {"machine_busy_pct": 100 * (machine_now[0] - machine[0]) / max(1, machine_now[1] - machine[1]),
               "worker_pct_of_a_core": 100 * (process_now[0] - process[0]) / hz / elapsed}
        mix.close()
        # Drain: until no released record has arrived for 3 s (bounded).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and time.time() - reader.last_seen < 3:
            if not worker.alive():
                raise AssertionError(f"worker exited: {worker.tail()}")
            time.sleep(0.2)
    finally:
        reader.stop()
    return offered, len(records), reader, cpu


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p95, p99 and max (nearest rank) of `values`."""
    if not values:
        return {}
    ordered = sorted(values)
    rank = lambda q: ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]  # noqa: E731
    return {"p50": rank(50), "p95": rank(95), "p99": rank(99), "max": ordered[-1]}


# -- soak ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class SoakResults:
    rate: float = 0.0
    seconds: float = 0.0
    interval_s: float = 0.0
    partitions: int = 0
    offered_events: int = 0  # consent changes included
    offered_raw_events: int = 0  # what the processor decides
    offered_events_per_s: float = 0.0
    decided_events: int = 0
    final_lag: int = 0
    growth_window_s: float = 60.0  # growth compares the medians of the first and the last window
    drained_s: float | None = None  # after the load ended, until every raw event was committed
    series: list[dict[str, float | int | None]] = field(default_factory=list)  # one sample per interval
    rss_mb: dict[str, dict[str, float | None]] = field(default_factory=dict)  # per process: first/last/max/growth
    machine: str = "shared 2-core development machine, other engineers' tests running: figures are of a loaded machine"
    notes: list[str] = field(default_factory=list)


def recycled(records: list[tuple[str, dict]]) -> Iterator[tuple[str, dict]]:
    """`records` round and round, each send a fresh copy with a new event id: a stream of any length
    that holds no more than the pool in this process's memory."""
    while True:
        for event_type, record in records:
            yield event_type, dict(record, event_id=None)


class SoakSampler:
    """RSS of each process, events decided (the group's commits) and lag, sampled on demand."""

    def __init__(self, settings: Settings, worker: ProcessorWorker, mix: MixProducer) -> None:
        self.settings = settings
        self.worker = worker
        self.mix = mix
        self.pids = {**stack_children(), "worker": worker.pid, "bench": os.getpid()}
        self.series: list[dict[str, float | int | None]] = []
        self._watcher = Consumer(settings.consumer_config(DATAPLANE_GROUP))  # reads offsets only
        self._started = time.perf_counter()
        self._last: tuple[float, int, float | None] | None = None

    def committed(self) -> int:
        raw = [tp for tp in self.mix.ends if tp[0].startswith("raw.")]
        if not raw:
            return 0
        committed = self._watcher.committed([TopicPartition(t, p) for t, p in raw], timeout=self.settings.kafka_timeout_s)
        return sum(max(0, tp.offset) for tp in committed)

    def acknowledged(self) -> int:
        return sum(end for tp, end in self.mix.ends.items() if tp[0].startswith("raw."))

    def sample(self, offered: int, draining: bool = False) -> dict[str, float | int | None]:
        now = time.perf_counter()
        decided, acked = self.committed(), self.acknowledged()
        worker_cpu = cpu_seconds(self.worker.pid) if self.worker.pid else None
        row: dict[str, float | int | None] = {"t_s": round(now - self._started, 1), "offered": offered,
                                              "decided": decided, "lag": max(0, acked - decided), "draining": draining}
        if self._last is not None:
            at, before, cpu = self._last
            row["decided_per_s"] = round((decided - before) / (now - at), 1)
            if worker_cpu is not None and cpu is not None:
                row["worker_cpu_pct"] = round(100 * (worker_cpu - cpu) / (now - at), 1)
        self._last = (now, decided, worker_cpu)
        for name, pid in self.pids.items():
            row[f"rss_{name}_mb"] = rss_mb(pid)
        self.series.append(row)
        return row

    def close(self) -> None:
        self._watcher.close()


def growth(series: list[dict[str, float | int | None]], key: str, window_s: float = 60.0) -> dict[str, float | None]:
    """first / last / max of `key` over the run, and growth % from the median of the load's first
    `window_s` to the median of its last (samples after the load ended are left out of both)."""
    values = [(row["t_s"], row[key]) for row in series if row.get(key) is not None and not row.get("draining")]
    if not values:
        return {"first": None, "last": None, "max": None, "growth_pct": None}
    end = values[-1][0]
    head = [v for t, v in values if t <= values[0][0] + window_s]
    tail = [v for t, v in values if t >= end - window_s]
    first_median, last_median = statistics.median(head), statistics.median(tail)
    return {"first": values[0][1], "last": values[-1][1], "max": max(v for _, v in values),
            "first_minute_median": first_median, "last_minute_median": last_median,
            "growth_pct": 100 * (last_median - first_median) / first_median if first_median else None}


def run_soak(settings: Settings, rate: float, seconds: float, interval: float, population: int,
             batch_size: int | None) -> SoakResults:
    """`rate` events/s of the demo mix for `seconds` through one real worker, sampled every `interval` s."""
    results = SoakResults(rate=rate, seconds=seconds, interval_s=interval, partitions=settings.kafka_partitions)
    pool = _records(3, population, int(min(rate * seconds, 20_000)))  # sent round and round with fresh ids
    extra = {"consumer_batch_size": str(batch_size)} if batch_size else {}
    worker = ProcessorWorker(settings, "bench-soak-worker", **extra)
    mix: MixProducer | None = None
    sampler: SoakSampler | None = None
    try:
        worker.start()
        mix = MixProducer(settings, {record["provider"] for _, record in pool})
        sampler = SoakSampler(settings, worker, mix)
        header = f"{'t s':>6} {'offered':>9} {'decided':>9} {'/s':>7} {'lag':>7} {'worker cpu':>10}  " + \
                 "  ".join(f"{'RSS ' + name:>14}" for name in sampler.pids)
        console.print(f"soak: {rate:,.0f} events/s for {seconds:g} s; sample every {interval:g} s (MiB)")
        console.print(header)

        def show(row: dict[str, float | int | None]) -> None:
            rss = "  ".join(f"{(row.get(f'rss_{name}_mb') or 0):>14,.0f}" for name in sampler.pids)  # type: ignore[union-attr]
            console.print(f"{row['t_s']:>6} {row['offered']:>9,} {row['decided']:>9,} {row.get('decided_per_s') or 0:>7,.0f} "
                          f"{row['lag']:>7,} {row.get('worker_cpu_pct') or 0:>9,.0f}%  {rss}", highlight=False)

        show(sampler.sample(0))
        total = int(rate * seconds)
        step = max(1, int(rate / 200))  # pace in batches of 5 ms worth of events
        stream = recycled(pool)
        started = time.perf_counter()
        next_sample = started + interval
        sent = raw = 0
        while sent < total and time.perf_counter() - started < seconds + 30:  # bounded in count and time
            ahead = started + sent / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
            for _ in range(min(step, total - sent)):
                event_type, record = next(stream)
                mix.send(event_type, record)
                sent += 1
                raw += event_type != CONSENT_EVENT
            for producer in mix.producers.values():
                producer.poll(0)
            if time.perf_counter() >= next_sample:
                if not worker.alive():
                    raise AssertionError(f"worker exited: {worker.tail()}")
                show(sampler.sample(sent))
                next_sample += interval
        results.offered_events, results.offered_raw_events = sent, raw
        results.offered_events_per_s = sent / (time.perf_counter() - started)
        ended = time.perf_counter()
        for producer in mix.producers.values():
            producer.flush(60)
        # Drain: until every acknowledged raw event is committed (bounded), sampling on.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if sampler.committed() >= sampler.acknowledged():
                results.drained_s = time.perf_counter() - ended
                break
            if time.perf_counter() >= next_sample:
                show(sampler.sample(sent, draining=True))
                next_sample += interval
            time.sleep(0.2)
        last = sampler.sample(sent, draining=True)
        show(last)
        results.decided_events, results.final_lag = int(last["decided"] or 0), int(last["lag"] or 0)
        results.series = sampler.series
        loaded = [row for row in sampler.series if not row.get("draining") and row.get("decided_per_s") is not None]
        tail = [float(row["decided_per_s"] or 0) for row in loaded if float(row["t_s"] or 0) >= float(loaded[-1]["t_s"] or 0) - 60]
        if tail and statistics.median(tail) < 0.9 * rate:
            results.notes.append(f"over the load's last minute {statistics.median(tail):,.0f} events/s were decided against "
                                 f"{rate:,.0f} offered: the pipeline fell behind (worker CPU in the table says whether "
                                 "the worker was busy or waiting)")
        # a minute each, or a quarter of a shorter run (windows of a short run would overlap)
        results.growth_window_s = min(60.0, seconds / 4)
        results.rss_mb = {name: growth(sampler.series, f"rss_{name}_mb", results.growth_window_s) for name in sampler.pids}
        if results.drained_s is None:
            results.notes.append("the worker had not committed every raw event 120 s after the load ended")
        results.notes.append("Tansu's memory storage keeps every message (DESIGN.md): the broker's RSS grows with "
                             "what was written, raw and outputs alike; that is the embedded broker, not the backbone")
    finally:
        if sampler is not None:
            sampler.close()
        if mix is not None:
            for producer in mix.producers.values():
                producer.flush(5)
        worker.stop()
    return results


def report_soak(results: SoakResults) -> Path:
    table = Table(title=f"processor soak: {results.offered_events_per_s:,.0f} events/s offered for {results.seconds:g} s "
                        f"({results.offered_events:,} events, {results.partitions} partitions) - {results.machine}")
    table.add_column("process")
    window = "minute" if results.growth_window_s >= 60 else f"{results.growth_window_s:g} s"
    for name in ("first", f"first {window} median", f"last {window} median", "last", "max", "growth"):
        table.add_column(name, justify="right")
    for name, figures in results.rss_mb.items():
        pct = figures.get("growth_pct")
        ok = pct is not None and abs(pct) <= SOAK_GROWTH_TARGET_PCT
        table.add_row(f"RSS {name} (MiB)", *(f"{figures.get(k) or 0:,.0f}" for k in
                                              ("first", "first_minute_median", "last_minute_median", "last", "max")),
                      f"[{'green' if ok else 'red'}]{pct:+.1f}%" if pct is not None else "-")
    console.print(table)
    drained = f"drained {results.drained_s:.1f} s after the load" if results.drained_s is not None else "not drained"
    console.print(f"decided {results.decided_events:,} of {results.offered_raw_events:,} raw events offered "
                  f"(+{results.offered_events - results.offered_raw_events:,} consent changes); lag at the end "
                  f"{results.final_lag:,}; {drained}; goal: RSS growth within {SOAK_GROWTH_TARGET_PCT:g}%")
    for note in results.notes:
        console.print(f"note: {note}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"processor-soak-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(asdict(results), indent=2) + "\n")
    console.print(f"results: {path}")
    return path


# -- report -------------------------------------------------------------------------------------


def report(results: Results) -> Path:
    ratio_ok = results.ratio >= RATIO_TARGET
    p99 = results.latency_ms.get("p99", float("nan"))
    p99_ok = p99 < P99_TARGET_MS
    table = Table(title=f"processor benchmark: {results.events:,} raw events of the demo mix "
                        f"(+{results.consent_events:,} consent changes), {results.partitions} partitions")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("target")
    table.add_row("bare loop (consume -> Router.route -> produce)", f"{results.bare_events_per_s:,.0f} events/s", "")
    table.add_row("processor (Faust worker, data plane), from first commit",
                  f"{results.processor_events_per_s:,.0f} events/s", "")
    table.add_row("processor, from \"enforcing\" (incl. group join)", f"{results.processor_events_per_s_from_ready:,.0f} events/s", "")
    table.add_row("ratio processor / bare", f"{results.ratio:.0%}",
                  f"[{'green' if ratio_ok else 'red'}]>= {RATIO_TARGET:.0%}")
    if results.handwritten_no_audit_events_per_s:
        table.add_row("hand-written loop, audit per event / no audit",
                      f"{results.handwritten_loop_events_per_s:,.0f} / {results.handwritten_no_audit_events_per_s:,.0f} events/s", "")
        no_audit = results.processor_events_per_s / results.handwritten_no_audit_events_per_s
        table.add_row("processor / hand-written no-audit loop", f"{no_audit:.0%}",
                      f"[{'green' if no_audit >= HANDWRITTEN_TARGET else 'red'}]>= {HANDWRITTEN_TARGET:.0%}")
        table.add_row("processor / hand-written loop with the same audit",
                      f"{results.processor_events_per_s / max(1.0, results.handwritten_loop_events_per_s):.0%}", "")
    if results.checkpoint_rounds:
        cost_ok = results.checkpoint_cost_ratio >= CHECKPOINT_TARGET
        table.add_row("data plane in this process, with checkpoints / without (best of "
                      f"{len(results.checkpoint_rounds)})",
                      f"{results.dataplane_in_process_events_per_s:,.0f} / {results.processor_no_checkpoints_events_per_s:,.0f} events/s",
                      f"{results.checkpoints_sealed} checkpoints")
        rounds = ", ".join(f"{r['with_checkpoints'] / r['without_checkpoints']:.0%}" for r in results.checkpoint_rounds)
        table.add_row("checkpoint cost: events/s with / without, median of rounds", f"{results.checkpoint_cost_ratio:.1%}",
                      f"[{'green' if cost_ok else 'red'}]>= {CHECKPOINT_TARGET:.0%} (drop <= {1 - CHECKPOINT_TARGET:.0%})[/] rounds {rounds}")
        table.add_row("  the same from CPU µs per event: without / with", f"{results.checkpoint_cpu_ratio:.1%}",
                      f"least {min(r['with_checkpoints_cpu_us_per_event'] for r in results.checkpoint_rounds):,.1f} / "
                      f"{min(r['without_checkpoints_cpu_us_per_event'] for r in results.checkpoint_rounds):,.1f} µs")
    if results.two_workers_events_per_s is not None:
        held = (f"raw partitions held {' + '.join(map(str, results.two_workers_partitions))}; "
                if results.two_workers_partitions else "")
        cpu = " + ".join(f"{seconds:.1f}" for seconds in results.two_workers_cpu_s or [])
        table.add_row("one worker / two workers (same events, pre-produced again)",
                      f"{results.one_worker_events_per_s or 0:,.0f} / {results.two_workers_events_per_s:,.0f} events/s",
                      f"{held}CPU s {sum(results.one_worker_cpu_s or []):.1f} / {cpu}")
        table.add_row("two workers / one worker", f"{results.two_workers_ratio or 0:.2f}x", "reported, not a target")
    table.add_row("offered load achieved", f"{results.offered_rate:,.0f} events/s ({results.offered_events:,} events)", "")
    for name in ("p50", "p95", "p99", "max"):
        value = results.latency_ms.get(name, float("nan"))
        target = f"[{'green' if p99_ok else 'red'}]< {P99_TARGET_MS:.0f} ms" if name == "p99" else ""
        table.add_row(f"latency produce -> shared {name}", f"{value:,.0f} ms", target)
    table.add_row("  of which send -> processor's produce p50 / p99",
                  f"{results.routed_ms.get('p50', float('nan')):,.0f} / {results.routed_ms.get('p99', float('nan')):,.0f} ms", "")
    if results.cpu_during_load:
        table.add_row("CPU during the load: machine busy / worker",
                      f"{results.cpu_during_load['machine_busy_pct']:.0f}% / {results.cpu_during_load['worker_pct_of_a_core']:.0f}% of a core", "")
    table.add_row("latency samples (released records)", f"{results.latency_samples:,}", "")
    table.add_row("worker RSS after throughput / after latency",
                  f"{results.worker_rss_mb_after_throughput or 0:,.0f} / {results.worker_rss_mb_after_latency or 0:,.0f} MiB", "")
    console.print(table)
    if results.profile is not None:
        fields = ("samples", "rate", "events", "recorded_s", "worker_cpu_s", "behind", "stages", "threads")
        recorded = spy.Profile(**{k: results.profile[k] for k in fields})
        console.print(spy.table(recorded, f"py-spy --gil profile of the worker in the throughput run ({recorded.samples:,} "
                                          f"samples at {recorded.rate} Hz, {recorded.events:,} events)"))
        if recorded.behind:
            console.print(f"note: py-spy: {recorded.behind}")
    for note in results.notes:
        console.print(f"note: {note}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"processor-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(asdict(results), indent=2) + "\n")
    console.print(f"results: {path}")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000, help="events pre-produced for the throughput runs")
    parser.add_argument("--population", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=5_000.0, help="offered load of the latency run, events/s")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of the latency run")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=None, help="BACKBONE_CONSUMER_BATCH_SIZE of the worker")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="bound of each throughput run")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--workers", type=int, default=2, choices=(1, 2),
                        help="2: also one worker, then two, on the same events pre-produced again (1: skip)")
    parser.add_argument("--checkpoint-rounds", type=int, default=3,
                        help="in-process data plane runs with and without checkpoints, each (0: skip)")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="record the worker of the throughput run with py-spy into DIR and summarise it")
    parser.add_argument("--soak", action="store_true", help="run the soak instead: memory of every process over time")
    parser.add_argument("--soak-seconds", type=float, default=600.0)
    parser.add_argument("--soak-rate", type=float, default=2_000.0)
    parser.add_argument("--soak-interval", type=float, default=10.0, help="seconds between soak samples")
    args = parser.parse_args()
    if args.soak:
        with clean_stop(deadline_s=args.soak_seconds + SOAK_MARGIN_S):
            soak = _soak(args)
        report_soak(soak)
        return
    with clean_stop():
        results = _throughput(args)
    report(results)


def _soak(args: argparse.Namespace) -> SoakResults:
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as directory, \
            embedded_settings(Path(directory), args.partitions) as settings:
        return run_soak(settings, args.soak_rate, args.soak_seconds, args.soak_interval, args.population, args.batch_size)


def _throughput(args: argparse.Namespace) -> Results:
    results = Results()
    results.notes.append("measured on a shared 2-core development machine with other engineers' work running: "
                         "figures of a loaded machine, compare ratios within one run")
    records = _records(1, args.population, args.events)
    results.consent_events = sum(1 for event_type, _ in records if event_type == CONSENT_EVENT)
    with tempfile.TemporaryDirectory(prefix="bench-processor-") as directory, \
            embedded_settings(Path(directory), args.partitions) as settings:
        results.partitions = settings.kafka_partitions
        ends, results.produce_s = pre_produce(settings, records)
        results.events = sum(ends.values())
        console.print(f"pre-produced {len(records):,} events in {results.produce_s:.1f}s; bare loop ...")
        results.bare_events_per_s, routed, results.bare_outputs = run_bare(settings, ends, args.max_seconds)
        assert routed == results.events, f"bare loop routed {routed} of {results.events}"
        results.router_loop_events_per_s = results.bare_events_per_s
        console.print("hand-written loops (with the processor's audit record, and without audit) ...")
        results.handwritten_loop_events_per_s = run_handwritten(settings, ends, args.max_seconds, audit=True)
        results.handwritten_no_audit_events_per_s = run_handwritten(settings, ends, args.max_seconds, audit=False)
        if args.checkpoint_rounds:
            console.print("the data plane in this process, with and without checkpoints ...")
            rounds = results.checkpoint_rounds = run_checkpoint_cost(settings, ends, args.max_seconds, args.checkpoint_rounds)
            results.dataplane_in_process_events_per_s = max(r["with_checkpoints"] for r in rounds)
            results.processor_no_checkpoints_events_per_s = max(r["without_checkpoints"] for r in rounds)
            results.checkpoint_cost_ratio = statistics.median(r["with_checkpoints"] / r["without_checkpoints"] for r in rounds)
            results.checkpoint_cpu_ratio = statistics.median(
                r["without_checkpoints_cpu_us_per_event"] / r["with_checkpoints_cpu_us_per_event"] for r in rounds)
            results.checkpoints_sealed = int(rounds[0]["checkpoints_sealed"])
        extra = {"consumer_batch_size": str(args.batch_size)} if args.batch_size else {}
        worker = ProcessorWorker(settings, "bench-worker", **extra)
        results.batch_size = args.batch_size or settings.consumer_batch_size
        recorder: spy.Recorder | None = None

        def record() -> None:
            nonlocal recorder
            assert worker.pid is not None
            recorder = spy.Recorder(worker.pid, args.profile / "worker.pyspy.txt")

        try:
            console.print(f"bare loop {results.bare_events_per_s:,.0f} events/s; processor ...")
            try:
                steady, from_ready, _ = run_processor(settings, worker, ends, args.max_seconds,
                                                      on_ready=record if args.profile else None)
            finally:
                if recorder is not None:
                    recorder.stop()
            if recorder is not None:
                summary = recorder.summarise(results.events)
                results.profile = spy.as_json(summary)
                results.notes.append(f"the worker's throughput run was recorded by py-spy (raw stacks: {recorder.output}); "
                                     "its events/s are of a sampled process")
            results.processor_events_per_s, results.processor_events_per_s_from_ready = steady, from_ready
            results.ratio = steady / results.bare_events_per_s
            results.worker_rss_mb_after_throughput = worker.rss_mb()
            if not args.skip_latency:
                console.print(f"processor {steady:,.0f} events/s; latency at {args.rate:,.0f} events/s for {args.seconds:g}s ...")
                offered, sent, reader, results.cpu_during_load = run_latency(settings, worker, args.rate, args.seconds, seed=2,
                                                    population=args.population)
                results.offered_rate, results.offered_events = offered, sent
                results.latency_samples = len(reader.latencies_ms)
                results.latency_ms = percentiles(reader.latencies_ms)
                results.offered_events_per_s = offered
                results.p50_produce_to_shared_ms = results.latency_ms.get("p50")
                results.p99_produce_to_shared_ms = results.latency_ms.get("p99")
                results.routed_ms = percentiles(reader.routed_ms)
                results.worker_rss_mb_after_latency = worker.rss_mb()
                if reader.unmatched:
                    results.notes.append(f"{reader.unmatched} shared records read in the latency run were of earlier "
                                         "events (the reader starts at the broker's reported end, which lags on Tansu)")
        finally:
            worker.stop()
        if args.workers == 2:
            console.print(f"one worker, then two, on the {len(records):,} events pre-produced again ...")
            results.one_worker_events_per_s, results.one_worker_cpu_s, _ = run_workers(
                settings, records, 1, args.max_seconds, args.batch_size)
            results.two_workers_events_per_s, results.two_workers_cpu_s, results.two_workers_partitions = run_workers(
                settings, records, 2, args.max_seconds, args.batch_size)
            results.two_workers_ratio = results.two_workers_events_per_s / results.one_worker_events_per_s
    return results


if __name__ == "__main__":
    main()
