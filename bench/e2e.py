"""End-to-end benchmark: producers for every agency -> processor worker -> ClickHouse sinks (chDB),
beside a bare confluent-kafka consume -> same transform -> produce loop measured in the same run.

    python -m bench.e2e [--events 30000] [--rate 3000] [--duration 15] [--seed 7]
    backbone bench      (same options)

Starts a private embedded broker and registry with a keyring (`app.local`), a real
`backbone process` worker subprocess, and the sinks of every recipient plus the audit sink as
threads of this process with one chDB client (as `backbone demo` runs them; chDB is one process
per directory). Then:
1. warm-up: a small batch of the mix, so group joins and topic creation are out of the figures;
2. throughput: `--events` events of the demo mix (consent changes included) produced as fast as
   the SDK goes; end-to-end events/s = raw events / (first produce -> last row landed), where
   "landed" means every raw event has its decisions in `audit.decisions` and every permitted
   record (one per permit decision) is in its recipient's table. Per stage: when the producers had
   every event acknowledged, when the worker had committed every raw event, when the sinks had
   landed the last row, each as a rate over the time from the first produce;
3. ceiling: `bench.processor.run_bare` (consume -> `Router.route` -> produce) and bench.processor's
   hand-written loops (with the processor's per-event audit record, and with no audit) on the same
   raw partitions, and the broker's raw pass-through (consume -> produce of the same bytes);
4. latency: `--rate` events/s of the mix for `--duration` s, while a poller queries the fraud
   database for a sample of the sent events, by the id the recipient receives for each (latency =
   start of the first query that sees the row - send time), and bench.processor's reader of every
   `shared.*` partition matches the released records of a sample of events to their send time
   (produce -> shared). The sinks of this phase use `--latency-batch-seconds`.
RSS (current and peak) of broker, registry, worker and this process (the sinks) after each phase.
The JSON carries bench.processor's keys too (`processor_events_per_s`: the worker's stage rate in
the throughput phase, with producers and sinks running beside it; `handwritten_*`,
`router_loop_events_per_s`, `p50/p99_produce_to_shared_ms`, `p99_produce_to_queryable_ms`,
`offered_events_per_s`).
Targets: end to end >= 35% of the bare loop; p99 produce -> shared < 500 ms and p99 produce ->
queryable < 1 s at 3,000 events/s offered (issue 16).
Results go to `bench/results/e2e-<timestamp>.json`. Every wait is bounded in count and time; only
processes started here are stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from rich.console import Console
from rich.table import Table

from app.local import ProcessorWorker, embedded_settings
from backbone.clickhouse.client import make_client
from backbone.errors import BackboneError
from backbone.events.catalog import CONSENT_EVENT, load_catalog
from backbone.events.serde import registry_client
from backbone.kafka.topics import (
    CHECKPOINTS_TOPIC,
    OPERATIONS_CHECKPOINTS_TOPIC,
    OPERATIONS_TOPIC,
    TIMESTAMPS_TOPIC,
    Topics,
)
from backbone.policy.agreements import Charter, load_agreements
from backbone.settings import Settings
from bench.processes import clean_stop, memory_mb, stack_children
from bench.processor import (
    DATAPLANE_GROUP,
    Ends,
    MixProducer,
    SharedReader,
    percentiles,
    recipient_ids,
    run_bare,
    run_handwritten,
    take,
)
from consumers import ddl
from consumers.batching import SinkThreads
from consumers.sink import Sink, sinks_for
from producers.synthetic import SyntheticStream

RATIO_TARGET = 0.35
P99_TARGET_MS = 1000.0  # produce -> queryable
P99_SHARED_TARGET_MS = 500.0  # produce -> shared
LATENCY_RECIPIENT = "fraud"
SAMPLED_PER_S = 200  # latency samples per second of offered load, at most (bounds the poll query)
SHARED_SAMPLED_PER_S = 1000  # events per second whose released records are timed produce -> shared (bounds the work here)
POLL_PAUSE_S = 0.05  # between visibility polls: the poller shares the chDB client with the sinks
PASSTHROUGH_TOPIC = "bench.passthrough"
AUDIT_TABLE = ddl.qualified(ddl.AUDIT_DATABASE, ddl.AUDIT_TABLE)
RESULTS_DIR = Path(__file__).resolve().parent / "results"
console = Console(width=max(Console().width, 120))  # the table stays readable when piped


@dataclass(slots=True)
class Stage:
    name: str
    count: int
    done_s: float  # after the first produce

    @property
    def rate(self) -> float:
        return self.count / self.done_s if self.done_s > 0 else float("nan")


@dataclass(slots=True)
class Results:
    events: int = 0
    raw_events: int = 0
    partitions: int = 0
    throughput_sink_batch: str = ""
    e2e_events_per_s: float = 0.0
    e2e_seconds: float = 0.0
    stages: list[dict[str, Any]] = field(default_factory=list)
    audit_rows: int = 0
    shared_rows: int = 0
    bare_events_per_s: float = 0.0
    bare_events: int = 0
    passthrough_events_per_s: float = 0.0
    ratio: float = 0.0
    offered_rate: float = 0.0
    offered_events: int = 0
    latency_sink_batch: str = ""
    latency_samples: int = 0
    latency_batch_interval_s: dict[str, float] = field(default_factory=dict)  # per sink: phase length / batches
    latency_unseen: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    decided_ms: dict[str, float] = field(default_factory=dict)  # send -> processor decision (audit decided_at)
    rss_mb: dict[str, dict[str, float | None]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    shared_latency_ms: dict[str, float] = field(default_factory=dict)  # produce -> shared, every released record
    # the keys bench.processor writes (issue 16), so results of both compare directly
    processor_events_per_s: float = 0.0  # the worker's stage rate in the throughput phase (producers, sinks beside it)
    handwritten_loop_events_per_s: float = 0.0
    handwritten_no_audit_events_per_s: float = 0.0
    router_loop_events_per_s: float = 0.0
    p50_produce_to_shared_ms: float | None = None
    p99_produce_to_shared_ms: float | None = None
    p50_produce_to_queryable_ms: float | None = None
    p99_produce_to_queryable_ms: float | None = None
    offered_events_per_s: float = 0.0


# -- processes ----------------------------------------------------------------------------------


def memory_report(worker: ProcessorWorker) -> dict[str, dict[str, float | None]]:
    pids = {**stack_children(), "worker": worker.pid, "sinks (this process)": os.getpid()}
    report = {}
    for name, pid in pids.items():
        rss, peak = memory_mb(pid)
        report[name] = {"rss": rss, "peak": peak}
    return report


# -- sinks --------------------------------------------------------------------------------------


class Sinks:
    """Every recipient's sink and the audit sink, as threads of this process, one client each.
    `carried` is what earlier sinks landed, so `landed()` counts from the start of the run."""

    def __init__(self, settings: Settings, charter: Charter, client: Any, carried: tuple[int, int] = (0, 0)) -> None:
        self.settings = settings
        self.carried = carried
        # the audit sinks of topics nothing writes during a bench (operator actions, their checkpoints,
        # TSA timestamps) subscribe to them all the same: create them, so no sink warns of an unknown topic
        topics = Topics(settings)
        for topic in (OPERATIONS_TOPIC, CHECKPOINTS_TOPIC, TIMESTAMPS_TOPIC):
            topics.ensure(topic)
        topics.ensure(OPERATIONS_CHECKPOINTS_TOPIC, partitions=1)
        self.sinks: list[Sink] = sinks_for(settings, charter, lambda: make_client(settings.clickhouse_dsn or ""), registry_client(settings))
        self.audit = next(sink for sink in self.sinks if sink.plan.name == "audit")
        self.shared = [sink for sink in self.sinks if sink is not self.audit]
        self._threads = SinkThreads(self.sinks)

    def start(self) -> Sinks:
        self._threads.start()
        return self

    def landed(self) -> tuple[int, int]:
        """(audit rows landed, shared rows landed or dead-lettered) so far."""
        audit, shared = self.carried
        return audit + self.audit.stats.landed, shared + sum(s.stats.landed + s.stats.dead_lettered for s in self.shared)

    def check(self) -> None:
        self._threads.check()

    def stop(self) -> None:
        self._threads.stop()


def audit_counts(client: Any) -> tuple[int, int]:
    """(raw events with a decision, permit decisions) in `audit.decisions`."""
    events, permits = client.query(f"SELECT uniqExact(event_id), countIf(decision = 'permit') FROM {AUDIT_TABLE}").result_rows[0]
    return int(events), int(permits)


# -- producing ----------------------------------------------------------------------------------


def mix(seed: int, events: int) -> list[tuple[str, dict]]:
    """The demo's mix: every agency, consent changes included, population sized as the demo's."""
    return list(SyntheticStream(seed=seed, population=max(200, events // 25), events=events))


def raw_count(records: Sequence[tuple[str, dict]]) -> int:
    return sum(1 for event_type, _ in records if event_type != CONSENT_EVENT)


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


class Progress:
    """Samples committed raw offsets of the worker and rows landed by the sinks every few ms, and
    remembers when each last changed."""

    def __init__(self, settings: Settings, sinks: Sinks) -> None:
        self.sinks = sinks
        self.committed = 0
        self.committed_at = 0.0
        self.landed = (0, 0)
        self.landed_at = 0.0
        self._watcher = Consumer(settings.consumer_config(DATAPLANE_GROUP))  # never subscribes: reads offsets only
        metadata = self._watcher.list_topics(timeout=settings.kafka_timeout_s)
        self._partitions = [TopicPartition(name, p) for name, topic in metadata.topics.items()
                            if name.startswith("raw.") for p in topic.partitions]
        self._timeout = settings.kafka_timeout_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-progress", daemon=True)

    def committed_total(self) -> int:
        return sum(max(0, tp.offset) for tp in self._watcher.committed(self._partitions, timeout=self._timeout))

    def start(self) -> Progress:
        self.committed = self.committed_total()
        self.landed = self.sinks.landed()
        self._thread.start()
        return self

    def _run(self) -> None:
        next_commit_check = 0.0
        while not self._stop.wait(0.01):
            now = time.perf_counter()
            landed = self.sinks.landed()
            if landed != self.landed:
                self.landed, self.landed_at = landed, now
            if now >= next_commit_check:
                committed = self.committed_total()
                if committed != self.committed:
                    self.committed, self.committed_at = committed, time.perf_counter()
                next_commit_check = now + 0.1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._watcher.close()


def wait_landed(client: Any, sinks: Sinks, worker: ProcessorWorker, events: int, timeout: float) -> tuple[int, int]:
    """Until `events` raw events are decided in the audit table and every permitted record is landed.
    Returns (audit rows, shared rows) landed then."""
    deadline = time.monotonic() + timeout
    last: tuple[int, int] | None = None
    decided = 0
    while time.monotonic() < deadline:
        sinks.check()
        if not worker.alive():
            raise BackboneError(f"worker exited: {worker.tail()}")
        landed = sinks.landed()
        if landed != last:  # the tables only change when a sink lands a batch
            last = landed
            decided, permits = audit_counts(client)
            if decided >= events and landed[1] >= permits:
                return landed
        time.sleep(0.02)
    raise BackboneError(f"{decided} of {events} raw events decided and landed within {timeout:g}s")


# -- ceiling ------------------------------------------------------------------------------------


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


# -- latency ------------------------------------------------------------------------------------


class Visibility:
    """Polls the recipient's tables for sent event ids; first query start that sees an id - its send time."""

    def __init__(self, client: Any, tables: dict[str, str]) -> None:
        self.client = client
        self.tables = tables  # event type -> qualified table
        self.pending: dict[str, dict[str, float]] = {table: {} for table in tables.values()}
        self.sampled: dict[str, float] = {}  # every sampled event id -> send time (perf_counter)
        self.latencies_ms: list[float] = []
        self.last_seen = time.perf_counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-visibility", daemon=True)
        self.error: BaseException | None = None
        self.queries = 0
        self.query_s = 0.0

    def sent(self, event_type: str, event_id: str, recipient_event_id: str, at: float) -> None:
        """The recipient's tables hold its own id for the event; the audit table the source event's."""
        with self._lock:
            self.pending[self.tables[event_type]][recipient_event_id] = at
            self.sampled[event_id] = at

    def unseen(self) -> int:
        with self._lock:
            return sum(len(ids) for ids in self.pending.values())

    def start(self) -> Visibility:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        try:
            while not self._stop.wait(POLL_PAUSE_S):
                for table, pending in self.pending.items():
                    with self._lock:
                        ids = list(pending)[:5000]
                    if not ids:
                        continue
                    at = time.perf_counter()
                    listed = ",".join(f"'{event_id}'" for event_id in ids)  # uuids from our own generator
                    rows = self.client.query(f"SELECT toString(event_id) FROM {table} WHERE event_id IN ({listed})").result_rows
                    self.queries += 1
                    self.query_s += time.perf_counter() - at
                    if rows:
                        with self._lock:
                            for (event_id,) in rows:
                                sent = pending.pop(event_id, None)
                                if sent is not None:
                                    self.latencies_ms.append((at - sent) * 1000)
                        self.last_seen = at
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc


def decided_ms(client: Any, sampled: dict[str, float]) -> list[float]:
    """Send -> the processor's decision (`decided_at` of the audit rows) per sampled event, in ms:
    the processor's share of the latency, the rest being the sink's."""
    wall = time.time() - time.perf_counter()  # send times are perf_counter; decided_at is wall clock
    ids = list(sampled)
    out: list[float] = []
    for offset in range(0, len(ids), 5000):
        listed = ",".join(f"'{event_id}'" for event_id in ids[offset:offset + 5000])
        rows = client.query(f"SELECT toString(event_id), toUnixTimestamp64Milli(min(decided_at)) FROM {AUDIT_TABLE} "
                            f"WHERE event_id IN ({listed}) GROUP BY event_id").result_rows
        out.extend(decided - (sampled[event_id] + wall) * 1000 for event_id, decided in rows)
    return out


@dataclass(slots=True)
class Latency:
    offered: float  # events/s achieved
    queryable_ms: list[float]  # sampled events: send -> first query that sees the row
    decided_ms: list[float]  # the same events: send -> the processor's decision
    unseen: int  # sampled events never seen
    shared_ms: list[float]  # every released record: send -> read from its shared topic
    shared_unmatched: int  # shared records of events sent before this phase


def run_latency(settings: Settings, client: Any, charter: Charter, worker: ProcessorWorker, sinks: Sinks,
                records: list[tuple[str, dict]], rate: float) -> Latency:
    """Produce -> queryable (sampled) and produce -> shared (every released record) at `rate` events/s."""
    database = ddl.database_name(settings.clickhouse_database_prefix, LATENCY_RECIPIENT)
    tables = {event_type: ddl.qualified(database, ddl.table_name(event_type))
              for agreement in charter.agreements if agreement.recipient == LATENCY_RECIPIENT
              for event_type in agreement.event_types}
    every = max(1, round(rate / SAMPLED_PER_S))
    own_id = {event_type: functions[0] for event_type, functions in recipient_ids(settings, LATENCY_RECIPIENT).items()}
    derive = recipient_ids(settings)
    every_shared = max(1, round(rate / SHARED_SAMPLED_PER_S))
    shared_sent: dict[str, float] = {}  # every recipient's id of every event -> send time (wall clock, as CreateTime)
    reader = SharedReader(settings, shared_sent)
    reader.start()
    visibility = Visibility(client, tables).start()
    producers = MixProducer(settings, {record["provider"] for _, record in records})
    step = max(1, int(rate / 200))  # pace in batches of 5 ms worth of events
    tracked = sent = 0
    try:
        started = time.perf_counter()
        for index in range(0, len(records), step):
            ahead = started + index / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
            for event_type, record in records[index:index + step]:
                if event_type in tables:
                    tracked += 1
                    if tracked % every == 0:
                        visibility.sent(event_type, record["event_id"], own_id[event_type](record["event_id"]),
                                        time.perf_counter())
                producers.send(event_type, record)
                sent += 1
                if sent % every_shared == 0:
                    at = time.time()
                    for recipient_id in derive.get(event_type, ()):
                        shared_sent[recipient_id(record["event_id"])] = at
            for producer in producers.producers.values():
                producer.poll(0)
        offered = len(records) / (time.perf_counter() - started)
        producers.close()
        # Drain: until every sampled row is seen, or none showed for 5 s (bounded).
        deadline = time.monotonic() + 60
        while visibility.unseen() and time.monotonic() < deadline and time.perf_counter() - visibility.last_seen < 5:
            sinks.check()
            if visibility.error is not None or not worker.alive():
                break
            time.sleep(0.1)
        # and until no released record reached a shared topic for 3 s (bounded)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and time.time() - reader.last_seen < 3:
            time.sleep(0.1)
    finally:
        visibility.stop()
        reader.stop()
    if visibility.error is not None:
        raise BackboneError(f"visibility poll failed: {visibility.error}") from visibility.error
    console.print(f"visibility poll: {visibility.queries:,} queries, {visibility.query_s / max(1, visibility.queries) * 1000:.1f} ms each")
    return Latency(offered, visibility.latencies_ms, decided_ms(client, visibility.sampled), visibility.unseen(),
                   reader.latencies_ms, reader.unmatched)


# -- report -------------------------------------------------------------------------------------


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def report(results: Results) -> Path:
    ratio_ok = results.ratio >= RATIO_TARGET
    p99 = results.latency_ms.get("p99", float("nan"))
    p99_ok = p99 < P99_TARGET_MS
    table = Table(title=f"end-to-end benchmark: {results.raw_events:,} raw events of the demo mix "
                        f"(+{results.events - results.raw_events:,} consent changes), {results.partitions} partitions")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("target")
    table.add_row("[b]end to end (produce -> landed in chDB)", f"[b]{results.e2e_events_per_s:,.0f} events/s",
                  f"{results.e2e_seconds:.1f} s")
    for stage in results.stages:
        table.add_row(f"  {stage['name']}", f"{stage['rate']:,.0f} /s",
                      f"{stage['count']:,} done at {stage['done_s']:.1f} s")
    table.add_row("  rows landed: audit / shared", f"{results.audit_rows:,} / {results.shared_rows:,}",
                  f"sink batch {results.throughput_sink_batch}")
    table.add_row("bare loop (consume -> Router.route -> produce)", f"{results.bare_events_per_s:,.0f} events/s",
                  f"{results.bare_events:,} events")
    table.add_row("hand-written loop, audit per event / no audit",
                  f"{results.handwritten_loop_events_per_s:,.0f} / {results.handwritten_no_audit_events_per_s:,.0f} events/s", "")
    table.add_row("broker raw pass-through (consume -> produce)", f"{results.passthrough_events_per_s:,.0f} events/s", "")
    table.add_row("[b]ratio end to end / bare loop", f"[b]{results.ratio:.0%}",
                  f"[{'green' if ratio_ok else 'red'}]>= {RATIO_TARGET:.0%}")
    if results.handwritten_no_audit_events_per_s:
        table.add_row("processor (in the pipeline) / hand-written no-audit loop",
                      f"{results.processor_events_per_s / results.handwritten_no_audit_events_per_s:.0%}",
                      "producers and sinks ran beside the worker")
        table.add_row("processor (in the pipeline) / hand-written loop with the same audit",
                      f"{results.processor_events_per_s / max(1.0, results.handwritten_loop_events_per_s):.0%}", "")
    table.add_row("offered load achieved", f"{results.offered_rate:,.0f} events/s",
                  f"{results.offered_events:,} events, sink batch {results.latency_sink_batch}")
    for name in ("p50", "p95", "p99", "max"):
        value = results.latency_ms.get(name, float("nan"))
        target = f"[{'green' if p99_ok else 'red'}]< {P99_TARGET_MS:,.0f} ms" if name == "p99" else ""
        decided = results.decided_ms.get(name, float("nan"))
        table.add_row(f"latency produce -> queryable {name}", f"{value:,.0f} ms",
                      f"{target}{'  ' if target else ''}of which to decision {decided:,.0f} ms")
    shared_p99 = results.shared_latency_ms.get("p99", float("nan"))
    for name in ("p50", "p95", "p99", "max"):
        target = (f"[{'green' if shared_p99 < P99_SHARED_TARGET_MS else 'red'}]< {P99_SHARED_TARGET_MS:,.0f} ms"
                  if name == "p99" else "")
        table.add_row(f"latency produce -> shared {name}", f"{results.shared_latency_ms.get(name, float('nan')):,.0f} ms", target)
    intervals = ", ".join(f"{name} {seconds:.2f}" for name, seconds in results.latency_batch_interval_s.items())
    table.add_row("sink batch interval in the latency phase", "s per batch", intervals)
    table.add_row("latency samples (seen / never seen)", f"{results.latency_samples:,} / {results.latency_unseen:,}", "")
    for when, processes in results.rss_mb.items():
        for name, memory in processes.items():
            table.add_row(f"RSS {name}, {when}", f"{_mb(memory['rss'])} MiB", f"peak {_mb(memory['peak'])} MiB")
    console.print(table)
    for note in results.notes:
        console.print(f"note: {note}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"e2e-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(asdict(results), indent=2) + "\n")
    console.print(f"results: {path}")
    return path


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30_000, help="events of the throughput phase (demo mix)")
    parser.add_argument("--rate", type=float, default=3_000.0, help="offered load of the latency phase, events/s")
    parser.add_argument("--duration", type=float, default=15.0, help="length of the latency phase, seconds")
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic events")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--latency-batch-seconds", type=float, default=0.2,
                        help="BACKBONE_SINK_BATCH_SECONDS of the sinks in the latency phase")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="bound of every wait")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the benchmark, print the table, write the JSON; returns its path."""
    args = parse_args(argv)
    with clean_stop():  # SIGTERM / SIGHUP stop the worker, sinks and stack as Ctrl-C does
        results = run(args)
    return report(results)


def run(args: argparse.Namespace) -> Results:
    results = Results()
    results.notes.append("measured on a shared 2-core development machine with other engineers' work running: "
                         "figures of a loaded machine, compare ratios within one run")
    warmup = mix(args.seed + 1000, 1_000)
    records = mix(args.seed, args.events)
    latency_records = mix(args.seed + 1, int(args.rate * args.duration))
    warmup_again = mix(args.seed + 2000, 500)
    results.events, results.raw_events = len(records), raw_count(records)
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as directory, \
            embedded_settings(Path(directory), args.partitions) as stack_settings:
        settings = stack_settings.model_copy(update={
            "clickhouse_dsn": f"chdb://{Path(directory).resolve() / 'clickhouse'}", "clickhouse_database_prefix": ""})
        results.partitions = settings.kafka_partitions
        charter = load_agreements(settings.agreements_dir, load_catalog(settings.schemas_dir))
        client = make_client(settings.clickhouse_dsn)
        worker = ProcessorWorker(settings, "e2e-worker")
        sinks: Sinks | None = None
        try:
            console.print("starting the worker and the sinks; warm-up ...")
            worker.start()
            sinks = Sinks(settings, charter, client).start()
            produce_all(settings, warmup)
            decided = raw_count(warmup)
            wait_landed(client, sinks, worker, decided, args.max_seconds)

            console.print(f"throughput: {len(records):,} events ...")
            results.throughput_sink_batch = f"{settings.sink_batch_seconds:g} s / {settings.sink_batch_rows:,} rows"
            progress = Progress(settings, sinks).start()
            committed_before, (audit_before, shared_before) = progress.committed, progress.landed
            try:
                producers, first, acked = produce_all(settings, records)
                decided += results.raw_events
                audit_rows, shared_rows = wait_landed(client, sinks, worker, decided, args.max_seconds)
                # the last commit may trail the landing a little: wait for it (bounded)
                deadline = time.monotonic() + 30
                while progress.committed - committed_before < results.raw_events and time.monotonic() < deadline:
                    time.sleep(0.05)
            finally:
                progress.stop()
            landed_at = progress.landed_at
            results.e2e_seconds = landed_at - first
            results.e2e_events_per_s = results.raw_events / results.e2e_seconds
            results.audit_rows, results.shared_rows = audit_rows - audit_before, shared_rows - shared_before
            stages = [
                Stage("producers (every event acknowledged)", len(records), acked - first),
                Stage("processor (raw events committed)", progress.committed - committed_before, progress.committed_at - first),
                Stage("sinks (audit + shared rows landed)", results.audit_rows + results.shared_rows, landed_at - first),
            ]
            results.stages = [{"name": s.name, "count": s.count, "done_s": s.done_s, "rate": s.rate} for s in stages]
            results.processor_events_per_s = stages[1].rate
            results.rss_mb["after throughput"] = memory_report(worker)
            sinks.stop()
            carried, sinks = sinks.landed(), None

            console.print(f"end to end {results.e2e_events_per_s:,.0f} events/s; bare loop and pass-through ...")
            raw_ends = {tp: end for tp, end in producers.ends.items() if tp[0].startswith("raw.")}
            results.bare_events_per_s, results.bare_events, _ = run_bare(settings, raw_ends, args.max_seconds)
            results.router_loop_events_per_s = results.bare_events_per_s
            console.print("hand-written loops (with the processor's audit record, and without audit) ...")
            results.handwritten_loop_events_per_s = run_handwritten(settings, raw_ends, args.max_seconds, audit=True)
            results.handwritten_no_audit_events_per_s = run_handwritten(settings, raw_ends, args.max_seconds, audit=False)
            results.passthrough_events_per_s = run_passthrough(settings, raw_ends, args.max_seconds)
            results.ratio = results.e2e_events_per_s / results.bare_events_per_s

            console.print(f"latency: {args.rate:,.0f} events/s for {args.duration:g} s ...")
            latency_settings = settings.model_copy(update={"sink_batch_seconds": args.latency_batch_seconds})
            results.latency_sink_batch = f"{latency_settings.sink_batch_seconds:g} s / {latency_settings.sink_batch_rows:,} rows"
            sinks = Sinks(latency_settings, charter, client, carried).start()
            produce_all(settings, warmup_again)
            decided += raw_count(warmup_again)
            wait_landed(client, sinks, worker, decided, args.max_seconds)
            batches = {sink.plan.name: (sink.stats.batches, time.perf_counter()) for sink in sinks.sinks}
            latency = run_latency(settings, client, charter, worker, sinks, latency_records, args.rate)
            results.offered_rate, results.offered_events = latency.offered, len(latency_records)
            results.offered_events_per_s = latency.offered
            results.latency_samples, results.latency_unseen = len(latency.queryable_ms), latency.unseen
            results.latency_ms = percentiles(latency.queryable_ms)
            results.p50_produce_to_queryable_ms = results.latency_ms.get("p50")
            results.p99_produce_to_queryable_ms = results.latency_ms.get("p99")
            results.shared_latency_ms = percentiles(latency.shared_ms)
            results.p50_produce_to_shared_ms = results.shared_latency_ms.get("p50")
            results.p99_produce_to_shared_ms = results.shared_latency_ms.get("p99")
            results.notes.append(f"produce -> shared timed for 1 in {max(1, round(args.rate / SHARED_SAMPLED_PER_S))} events "
                                 f"({len(latency.shared_ms):,} released records); {latency.shared_unmatched:,} other "
                                 "shared records read (events not timed, or sent before the phase)")
            results.latency_batch_interval_s = {
                sink.plan.name: (time.perf_counter() - batches[sink.plan.name][1]) / max(1, sink.stats.batches - batches[sink.plan.name][0])
                for sink in sinks.sinks}
            results.decided_ms = percentiles(latency.decided_ms)
            for sink in sinks.sinks:
                st = sink.stats
                results.notes.append(f"sink {sink.plan.name}: {st.batches} batches; seconds in consume {st.consume_s:.1f}, "
                                     f"insert {st.insert_s:.1f}, commit {st.commit_s:.1f}, after-batch {st.hook_s:.1f}")
            results.rss_mb["after latency"] = memory_report(worker)
            if latency.unseen:
                results.notes.append(f"{latency.unseen} sampled events never became visible in {LATENCY_RECIPIENT}'s tables "
                                     "(denied, or later than the drain allowed)")
        finally:
            if sinks is not None:
                sinks.stop()
            worker.stop()
            client.close()
    return results


if __name__ == "__main__":
    main()
