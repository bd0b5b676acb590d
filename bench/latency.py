"""Produce -> shared latency: a reader of every `shared.*` partition matching each released record
to the send time of its source event (by the id the recipient receives for it), and the paced load
that offers a steady rate through the SDK meanwhile.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import OFFSET_END, Consumer, TopicPartition

from app.local import ProcessorWorker
from backbone.audit.batches import Unpacker
from backbone.events.serde import Decoder, registry_client
from backbone.kafka.topics import AUDIT_TOPIC
from backbone.settings import Settings
from bench.loops import MixProducer, demo_records


class SharedReader:
    """Every `shared.*` partition from its end; receive time - send time per released record, by event id.
    With `routed`, also `audit.decisions` from its end: a released record's timestamp is its released
    event time (never the processing time, which would link domains), so the time of the processor's
    produce call is read from the CreateTime of the event's audit record, keyed by its source id."""

    def __init__(self, settings: Settings, sent: dict[str, float], routed: dict[str, float] | None = None) -> None:
        self.settings = settings
        self.sent = sent
        self.sources = routed if routed is not None else {}  # source event id -> send time (filled as events are sent)
        self.latencies_ms: list[float] = []
        self.routed_ms: list[float] = []  # send -> the processor's produce call (its audit record's CreateTime)
        self.unmatched = 0
        self.last_seen = time.time()
        self._stop = threading.Event()
        # fetch.wait.max.ms low so the reader measures the processor, not its own long poll.
        self._consumer = Consumer(settings.consumer_config(f"bench-latency-{time.monotonic_ns()}", **{"fetch.wait.max.ms": 10}))
        metadata = self._consumer.list_topics(timeout=settings.kafka_timeout_s)
        self._consumer.assign([TopicPartition(name, p, OFFSET_END) for name, topic in metadata.topics.items()
                               if name.startswith("shared.") or (routed is not None and name == AUDIT_TOPIC)
                               for p in topic.partitions])
        self._decode = Decoder(registry_client(settings))
        self._unpack = Unpacker(self._decode.source.schema)
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
        sources = self.sources
        while not self._stop.is_set():
            messages = consume(1000, 0.05)
            received = time.time()
            for message in messages:
                if message.error() is not None:
                    continue
                if message.topic() == AUDIT_TOPIC:  # many events' audit records in one message (`backbone.audit.batches`)
                    for record in self._unpack.records(message.value() or b""):
                        at = sources.get(str(record["event_id"]))
                        if at is not None:
                            routed.append(message.timestamp()[1] - at * 1000)
                    continue
                event_id = self.event_id(message.value())
                at = sent.get(event_id)
                if at is None:
                    self.unmatched += 1
                    continue
                out.append((received - at) * 1000)
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
    records = demo_records(seed, population, count)
    sent: dict[str, float] = {}
    sources: dict[str, float] = {}
    derive = recipient_ids(settings)
    mix = MixProducer(settings, {record["provider"] for _, record in records})
    reader = SharedReader(settings, sent, sources)
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
                at = time.time()  # wall clock: comparable with the audit records' CreateTime
                sources[str(record["event_id"])] = at
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
