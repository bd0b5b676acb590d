"""Events per second through the processor for the demo's event mix, beside a bare confluent-kafka
consume -> `Router.route` -> produce loop in the same run, and end-to-end latency from produce to
shared-topic delivery at a steady offered load.

    python -m bench.processor [--events 50000] [--rate 5000] [--seconds 15] [--partitions 6]

Starts a private embedded broker and registry in a temporary directory, then:
1. pre-produces `--events` synthetic events (every agency, consent changes included) through the SDK;
2. bare loop: all raw partitions assigned from the beginning, each message routed exactly as the
   processor routes it (same Router, engine, keyring, consent table), outputs produced to
   `bench.bare.*` copies of the output topics (deleted afterwards), one flush at the end;
3. processor: a real `backbone process` worker; its rate is raw events decided / time until the
   group's committed offsets reach the ends of every raw partition (from the first commit, so the
   consumer-group join is left out, as the bare loop's assignment is; the rate from "enforcing" is
   printed beside it);
4. latency: `--rate` events/s for `--seconds` through the SDK while a reader assigned to every
   `shared.*` partition records receive time - send time per released record, matched by event id.
Targets: processor >= 50% of the bare loop; p99 < 500 ms at 5,000 events/s.
Results go to `bench/results/processor-<timestamp>.json`. Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, Producer, TopicPartition
from rich.console import Console
from rich.table import Table

from backbone.catalog import CONSENT_EVENT
from backbone.compacted import CompactedTopicReader
from backbone.serde import Decoder, registry_client
from backbone.settings import Settings
from backbone.topics import AUDIT_TOPIC, CONSENT_TOPIC, Topics, shared_topic
from app.local import ProcessorWorker, embedded_settings
from processors.app import APP_ID, Enforcement
from processors.dataplane import LINGER_MS
from processors.router import DLQ_TOPIC, Router
from producers.sdk import AgencyProducer, Delivery
from producers.synthetic import generate

RATIO_TARGET = 0.5
P99_TARGET_MS = 500.0
DATAPLANE_GROUP = f"{APP_ID}-dataplane"
BARE_PREFIX = "bench.bare."
RESULTS_DIR = Path(__file__).resolve().parent / "results"
console = Console()

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
            messages = consumer.consume(settings.consumer_batch_size, 0.5)
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
    from fastavro import parse_schema, schemaless_reader, schemaless_writer
    import io

    from backbone.catalog import AUDIT_EVENT

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
            messages = consumer.consume(settings.consumer_batch_size, 0.5)
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


def run_processor(settings: Settings, worker: ProcessorWorker, ends: Ends, max_seconds: float) -> tuple[float, float]:
    """(events/s from the first commit, events/s from "enforcing") until every raw partition is committed to its end."""
    target = sum(ends.values())
    partitions = [TopicPartition(topic, partition) for topic, partition in ends]
    watcher = Consumer(settings.consumer_config(DATAPLANE_GROUP))  # never subscribes: only reads the group's offsets
    try:
        worker.start()
        ready = time.perf_counter()
        first: tuple[float, int] | None = None
        deadline = time.monotonic() + max_seconds
        done = 0
        while time.monotonic() < deadline:
            done = committed_total(watcher, partitions, ends, settings.kafka_timeout_s)
            now = time.perf_counter()
            if done and first is None:
                first = (now, done)
            if done >= target:
                break
            if not worker.alive():
                raise AssertionError(f"worker exited: {worker.tail()}")
            time.sleep(0.05)
        finished = time.perf_counter()
    finally:
        watcher.close()
    assert done >= target, f"processor committed {done} of {target} raw events within {max_seconds:g}s"
    assert first is not None
    steady = (target - first[1]) / (finished - first[0]) if finished > first[0] and target > first[1] else float("nan")
    return steady, target / (finished - ready)


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
        self._thread = threading.Thread(target=self._run, name="bench-shared-reader", daemon=True)

    def start(self, settle_s: float = 1.0) -> None:
        self._thread.start()
        time.sleep(settle_s)  # positions resolve to the end before the load starts

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._consumer.close()

    def _run(self) -> None:
        consume, sent, decode, out, routed = self._consumer.consume, self.sent, self._decode, self.latencies_ms, self.routed_ms
        while not self._stop.is_set():
            messages = consume(1000, 0.05)
            received = time.time()
            for message in messages:
                if message.error() is not None:
                    continue
                event_id = str(decode(message.value()).record["event_id"])
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


def run_latency(settings: Settings, worker: ProcessorWorker, rate: float, seconds: float, seed: int,
                population: int) -> tuple[float, int, SharedReader, dict[str, float]]:
    """(offered events/s, events sent, the reader holding the latencies, CPU use during the load)."""
    count = int(rate * seconds)
    records = _records(seed, population, count)
    sent: dict[str, float] = {}
    # Each recipient receives its own id for an event (derived under its domain key): map every id a
    # recipient can receive back to the send time of its source event.
    from backbone.catalog import load_catalog
    from backbone.keyring import OVERSIGHT_DOMAIN, Keyring
    from backbone.policy.agreements import load_agreements
    from backbone.policy.pseudonym import event_id_function

    keyring = Keyring.open(settings)
    charter = load_agreements(settings.agreements_dir, load_catalog(settings.schemas_dir))
    derive: dict[str, list] = {}
    for agreement in charter.agreements:
        function = event_id_function(keyring, agreement.domain or OVERSIGHT_DOMAIN, agreement.recipient)
        for event_type in agreement.event_types:
            derive.setdefault(event_type, []).append(function)
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
        table.add_row("processor / hand-written no-audit loop",
                      f"{results.processor_events_per_s / results.handwritten_no_audit_events_per_s:.0%}", ">= 80%")
        table.add_row("processor / hand-written loop with the same audit",
                      f"{results.processor_events_per_s / max(1.0, results.handwritten_loop_events_per_s):.0%}", "")
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
    args = parser.parse_args()

    results = Results()
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
        extra = {"consumer_batch_size": str(args.batch_size)} if args.batch_size else {}
        worker = ProcessorWorker(settings, "bench-worker", **extra)
        results.batch_size = args.batch_size or settings.consumer_batch_size
        try:
            console.print(f"bare loop {results.bare_events_per_s:,.0f} events/s; processor ...")
            steady, from_ready = run_processor(settings, worker, ends, args.max_seconds)
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
    report(results)


if __name__ == "__main__":
    main()
