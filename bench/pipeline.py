"""The pipeline side of the end-to-end benchmark: every recipient's sink and the audit sink as
threads of this process, what they have landed, the worker's committed raw offsets followed
meanwhile, the wait until every raw event is decided and landed, the poll that times when sampled
events become queryable in a recipient's tables, and the memory of every process.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from app.local import ProcessorWorker
from backbone.clickhouse.client import make_client
from backbone.errors import BackboneError
from backbone.events.serde import registry_client
from backbone.kafka.topics import (
    CHECKPOINTS_TOPIC,
    OPERATIONS_CHECKPOINTS_TOPIC,
    OPERATIONS_TOPIC,
    TIMESTAMPS_TOPIC,
    Topics,
)
from backbone.policy.agreements import Charter
from backbone.settings import Settings
from bench.processes import memory_mb, stack_children
from bench.workers import DATAPLANE_GROUP
from consumers import ddl
from consumers.batching import SinkThreads
from consumers.sink import Sink, sinks_for

AUDIT_TABLE = ddl.qualified(ddl.AUDIT_DATABASE, ddl.AUDIT_TABLE)
POLL_PAUSE_S = 0.05  # between visibility polls: the poller shares the chDB client with the sinks


def memory_report(worker: ProcessorWorker) -> dict[str, dict[str, float | None]]:
    pids = {**stack_children(), "worker": worker.pid, "sinks (this process)": os.getpid()}
    report = {}
    for name, pid in pids.items():
        rss, peak = memory_mb(pid)
        report[name] = {"rss": rss, "peak": peak}
    return report


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
        """(audit messages landed, shared rows landed or dead-lettered) so far; an audit message holds
        up to 64 events' records (`backbone.audit.batches`): `audit_counts` counts rows."""
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
