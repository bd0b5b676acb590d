"""The processor's high-volume path: batched librdkafka consume -> route -> produce -> commit.

At-least-once with no loss: a batch's outputs (shared records, audit records, DLQ entries) are all
acknowledged by the cluster before the batch's offsets are committed. If delivery fails, nothing is
committed and the data plane stops, so a restarted worker replays the batch; duplicates carry the
same event id and sinks drop them.

Several workers with the same group id share the raw topics' partitions (librdkafka's consumer
group), so adding workers scales by partitions.

Each batch's audit records are sealed by one signed checkpoint (`processors.checkpoints`): the
records are placed (writer, checkpoint, leaf) as they are routed, held until the batch's checkpoint
is signed and recorded in the writer's state, then produced with the checkpoint, many records to a
Kafka record (`backbone.audit.batches`), all before the offsets are committed.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from backbone.audit.batches import pack
from backbone.errors import BackboneError, RegistryError
from backbone.kafka.topics import AUDIT_TOPIC, CHECKPOINTS_TOPIC, QUALITY_PENDING_TOPIC, RAW_PATTERN
from backbone.policy.decision import ConsentState
from backbone.settings import Settings
from processors.checkpoints import Checkpointer
from processors.quality_release import PendingTopic
from processors.release_order import release_order
from processors.router import Output, Router

log = logging.getLogger(__name__)

# Outputs wait at most this long to be grouped into produce requests. Measured with
# `python -m bench.processor` on the embedded broker: 50 ms gives ~30-50% more events/s on a
# backlog (fewer, larger lz4 batches) but triples p99 produce->shared latency at 2k events/s
# (~0.6 s -> ~2 s); 10 ms matched 2 ms on latency (throughput not yet measured). Latency is the
# target, so 2 ms.
LINGER_MS = 2
# How long one consume call waits for the first message while nothing is waiting.
IDLE_WAIT_S = 0.1
# A batch of this many events is mixed enough: its releases need not wait for more (`_next_batch`).
MIX_ENOUGH = 256
# How long the data plane waits before reading again after the schema registry failed it.
REGISTRY_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)


class DeliveryFailed(BackboneError):
    """Outputs of a batch were not acknowledged; its offsets stay uncommitted for a replay."""


class DataPlane:
    """One consume/route/produce/commit loop, run on its own thread by the Faust service."""

    def __init__(self, settings: Settings, router: Router, consent: ConsentState, group_id: str,
                 before_batch: Callable[[], None] | None = None, gate: Callable[[], str | None] | None = None,
                 checkpoints: Callable[[], Checkpointer | None] | None = None,
                 operations_head: Callable[[], tuple[int, str] | None] | None = None, freeze_heap: bool = False) -> None:
        self.settings = settings
        # A worker process's data plane freezes the heap built to start (modules, charter, compiled
        # closures, the app): the cyclic GC's full collections, triggered by each batch's short-lived
        # records, then no longer walk it (measured: ~90 ms of 3 s of a worker's CPU on 49k events).
        # Frozen objects are freed by reference counting only: a start-up object that later ends in
        # a reference cycle (an old charter's compiled closures after an agreement change) stays.
        self.freeze_heap = freeze_heap
        self.router = router
        # Opens the worker's audit writer when the data plane starts (default: from the settings,
        # the router's catalog, keyring and schema source; anchoring `operations_head()`). A factory
        # returning None leaves audit records unsealed: only `bench.processor` does, to measure what sealing costs.
        self._open_checkpoints = checkpoints or (lambda: Checkpointer.open(
            settings, router.catalog, router.keyring, router.schemas.register, operations_head))
        self.checkpoints: Checkpointer | None = None
        self.consent = consent
        self.group_id = group_id
        self.before_batch = before_batch
        # Asked before every batch: a reason to wait (a state reader is behind or dead) pauses the
        # data plane, which decides nothing until the reason is gone.
        self.gate = gate
        self._held: str | None = None  # the gate's reason while the data plane is paused by it
        self.registry_waits = 0  # consecutive batches cut short by an unavailable registry
        self.consumed = 0
        self.produced = 0
        self.batches = 0
        self.checkpoints_sealed = 0
        self.pending = PendingTopic(settings, group_id)  # records of gated agreements waiting for their quality window
        # where the time goes, in seconds: consume, route + produce calls, waiting for acks, commit
        self.seconds = {"consume": 0.0, "route": 0.0, "flush": 0.0, "commit": 0.0}
        self.error: BaseException | None = None
        self._failures: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run_guarded, name="data-plane", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    @property
    def paused(self) -> str | None:
        """Why the data plane decides nothing right now, if it does not."""
        return self._held or ("schema registry unavailable" if self.registry_waits else None)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run_guarded(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # noqa: BLE001 - reported to the service, which stops the worker
            self.error = exc
            log.error("data plane stopped: %s", exc)

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._failures.append(f"{message.topic()}: {error.str()}")

    def run(self) -> None:
        if self.freeze_heap:
            gc.collect()
            gc.freeze()
        consumer = Consumer(self.settings.consumer_config(self.group_id, **{
            "enable.auto.offset.store": False,
            "topic.metadata.refresh.interval.ms": 5000,
            "fetch.wait.max.ms": 20,
        }))
        # Only failures need a callback: successes are counted by flush() returning 0.
        producer = Producer(self.settings.producer_config(**{"linger.ms": LINGER_MS, "delivery.report.only.error": True}))
        checkpoints = self.checkpoints = self._open_checkpoints()
        clean = False
        if checkpoints is not None and checkpoints.republish is not None:  # the last checkpoint before an unclean stop, again
            self._produce(producer, producer.produce, CHECKPOINTS_TOPIC, checkpoints.republish.key, checkpoints.republish.value,
                          None, self._on_delivery)
        consumer.subscribe([RAW_PATTERN])
        batch_size = self.settings.consumer_batch_size
        mix_s = self.settings.release_mix_ms / 1000
        try:
            while not self._stop.is_set():
                if self._hold(consumer):
                    continue
                started = time.perf_counter()
                messages = self._next_batch(consumer, batch_size, mix_s)
                self.seconds["consume"] += time.perf_counter() - started
                if not messages:
                    producer.poll(0)
                    now = datetime.now(UTC)
                    if self.router.quality is not None and (self.router.quality.due(now) or self.router.gate.closing(now)):
                        self._process([], consumer, producer)  # a window ended in a lull: it goes now
                    continue
                waits = self.registry_waits
                if self.before_batch is not None:
                    self.before_batch()
                self._process(messages, consumer, producer)
                if self.registry_waits == waits and waits:
                    log.info("schema registry answers again after %d waits; deciding", waits)
                    self.registry_waits = 0
            if self.router.quality is not None and self.router.quality.windows:
                self._process([], consumer, producer, final=True)  # a clean stop hands its open hour's windows over
            clean = True
        finally:
            clean = producer.flush(self.settings.kafka_timeout_s) == 0 and not self._failures and clean
            consumer.close()
            self.pending.close()
            if checkpoints is not None:
                checkpoints.close(clean)

    @staticmethod
    def _next_batch(consumer: Consumer, batch_size: int, mix_s: float = 0.0) -> list[Message]:
        """What is waiting now, up to `batch_size`; when nothing is, the first message to arrive
        (within IDLE_WAIT_S) and whatever came with it. Batch sizes follow the load: one batch
        takes what arrived while the previous one was decided, up to `batch_size` under a backlog
        (no fixed wait for a batch to fill: librdkafka's consume() waits its whole timeout for
        `batch_size` messages).

        A batch smaller than MIX_ENOUGH also takes what arrives within `mix_s` (the release mix,
        `BACKBONE_RELEASE_MIX_MS`): its shared records are produced in a fresh random order per
        recipient topic (`processors.release_order`), and a batch of one event would line up copies
        of it by offset across sharing domains. Under light load a batch is every event of its mix
        window, which is what a recipient learns anyway from when it receives them."""
        messages = consumer.consume(batch_size, 0)
        if not messages:
            messages = consumer.consume(1, IDLE_WAIT_S)
            if not messages:
                return messages
        enough, deadline = min(batch_size, MIX_ENOUGH), time.monotonic() + mix_s
        while len(messages) < enough and (left := deadline - time.monotonic()) > 0:
            messages += consumer.consume(enough - len(messages), left)
        if len(messages) < batch_size:
            messages += consumer.consume(batch_size - len(messages), 0)
        return messages

    def _hold(self, consumer: Consumer) -> bool:
        """Pause while the gate gives a reason (True: nothing consumed this turn), resume after."""
        reason = self.gate() if self.gate is not None else None
        if reason is None:
            if self._held is not None:
                consumer.resume(consumer.assignment())
                log.info("data plane resumes deciding (was waiting: %s)", self._held)
                self._held = None
            return False
        if self._held is None:
            log.warning("data plane pauses, deciding nothing until: %s", reason)
            consumer.pause(consumer.assignment())
        self._held = reason
        # Keep the group membership alive. A partition assigned meanwhile is not paused yet: put
        # back whatever it delivers (nothing is skipped) and pause it too.
        for message in consumer.consume(1, 0.2):
            if message.error() is None:
                position = TopicPartition(message.topic(), message.partition(), message.offset())
                consumer.seek(position)
                consumer.pause([position])
        return True

    def _process(self, messages: list[Message], consumer: Consumer, producer: Producer, final: bool = False) -> None:
        started = time.perf_counter()
        now = datetime.now(UTC)
        route_many = self.router.route_many
        consent = self.consent
        produce = producer.produce
        on_delivery = self._on_delivery
        offsets: dict[tuple[str, int], int] = {}
        firsts: dict[tuple[str, int], int] = {}
        produced = 0
        checkpoints = self.checkpoints
        place = checkpoints.place if checkpoints is not None else None
        audit: list[bytes] = []  # (placed) audit records, produced in batches once the batch is sealed
        shared: list[Output] = []  # released records, produced in a random order once the batch is routed
        items = []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error: %s", error.str())
                continue
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            firsts.setdefault((topic, partition), offset)
            items.append((topic, message.key(), message.value(), message.headers(), partition, offset))
        # The batch a stage at a time (`Router.route_many`). The registry down or refusing: nothing is
        # dead-lettered and nothing skipped; what was routed is delivered and committed, the rest read again.
        done, unavailable = route_many(items, consent, now)
        for (topic, _, _, _, partition, offset), outputs in zip(items, done):
            for output in outputs:
                if output.topic == AUDIT_TOPIC:
                    audit.append(place(output.value) if place is not None else output.value)
                    continue
                if output.timestamp:
                    shared.append(output)
                    continue
                # a window's pending records all in one partition, in order (`processors.quality_release`)
                placed = self.pending.partition(producer, output.key) if output.topic == QUALITY_PENDING_TOPIC else None
                self._produce(producer, produce, output.topic, output.key, output.value, output.headers, on_delivery,
                              partition=placed)
                produced += 1
            offsets[(topic, partition)] = offset + 1
        # Quality windows whose hour ended, each sealed in this batch's checkpoint like a decision.
        for output in self.router.quality_outputs(now, everything=final) if unavailable is None else ():
            if place is not None and output.topic == AUDIT_TOPIC:
                audit.append(place(output.value))
            else:
                self._produce(producer, produce, output.topic, output.key, output.value, output.headers, on_delivery)
                produced += 1
        for output in release_order(shared):
            try:  # the usual case inline: a call less per released record
                produce(output.topic, output.value, output.key, headers=output.headers, on_delivery=on_delivery,
                        timestamp=output.timestamp)
            except BufferError:
                self._produce(producer, produce, output.topic, output.key, output.value, output.headers, on_delivery,
                              output.timestamp)
        produced += len(shared) + self._seal(producer, audit)
        routed = time.perf_counter()
        self._flushed(producer)
        flushed = time.perf_counter()
        if offsets:
            consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False)
        seconds = self.seconds
        seconds["route"] += routed - started
        seconds["flush"] += flushed - routed
        seconds["commit"] += time.perf_counter() - flushed
        self.consumed += sum(o - firsts[k] for k, o in offsets.items())
        self.produced += produced
        self.batches += 1
        if unavailable is None and self.router.gate.judged:
            self._release(producer, now)
        if unavailable is not None:
            self._wait_for_registry(consumer, {k: offsets.get(k, first) for k, first in firsts.items()}, unavailable)

    def _seal(self, producer: Producer, audit: list[bytes]) -> int:
        """Produce placed audit records with the checkpoint that seals them; how many Kafka records."""
        if not audit:
            return 0
        checkpoints, produce, on_delivery, produced = self.checkpoints, producer.produce, self._on_delivery, 0
        # Many events' audit records in one Kafka record (`backbone.audit.batches`), keyed by the
        # writer: one produce call per RECORDS_PER_MESSAGE events, not one per event. Packed
        # before the checkpoint is sealed: once a stable writer's checkpoint is acknowledged,
        # only a failed delivery or a dead process may keep its records off Kafka (a restart
        # names that batch interrupted), never an error in this worker's own code.
        values = list(pack(audit))
        sealed = checkpoints.seal() if checkpoints is not None else None
        if sealed is not None and checkpoints.checkpoint_first:  # acknowledged before any record it seals (`processors.writer_rebuild`)
            self._produce(producer, produce, CHECKPOINTS_TOPIC, sealed.key, sealed.value, None, on_delivery)
            self._flushed(producer)
        key = sealed.key if sealed is not None else None
        for value in values:
            self._produce(producer, produce, AUDIT_TOPIC, key, value, None, on_delivery)
            produced += 1
        if sealed is not None:
            if not checkpoints.checkpoint_first:
                self._produce(producer, produce, CHECKPOINTS_TOPIC, sealed.key, sealed.value, None, on_delivery)
            produced += 1
            self.checkpoints_sealed += 1
        return produced

    def _release(self, producer: Producer, now: datetime) -> None:
        """Release the pending records of every judged window (`processors.quality_gate`), a chunk at
        a time, each chunk's audit records sealed and everything acknowledged before the next; then
        the window's close marker. A stop midway leaves the window unmarked: the rest stays held."""
        gate, place = self.router.gate, self.checkpoints.place if self.checkpoints is not None else None
        for window in gate.due():
            outcomes: Counter[str] = Counter()
            for chunk in self.pending.read(producer, window):
                audit, shared = [], []
                for output in gate.release(window, chunk, self.consent, now, outcomes):
                    if output.topic == AUDIT_TOPIC:
                        audit.append(place(output.value) if place is not None else output.value)
                    else:
                        shared.append(output)
                for output in release_order(shared):
                    self._produce(producer, producer.produce, output.topic, output.key, output.value, output.headers,
                                  self._on_delivery, output.timestamp)
                self.produced += len(shared) + self._seal(producer, audit)
                self._flushed(producer)
                mark = gate.progress(window, outcomes)  # after the chunk is acknowledged: never more than was released
                self._produce(producer, producer.produce, mark.topic, mark.key, mark.value, mark.headers, self._on_delivery,
                              partition=self.pending.partition(producer, mark.key))
                self._flushed(producer)  # one round trip per chunk: a worker dying next leaves it listed
            marker = gate.finish(window, outcomes)
            self._produce(producer, producer.produce, marker.topic, marker.key, marker.value, marker.headers, self._on_delivery,
                          partition=self.pending.partition(producer, marker.key))
            self._flushed(producer)
            log.info("quality window of worker %s, %s, %d minutes from %s judged: %s", window.worker, window.event_type,
                     window.minutes, datetime.fromtimestamp(window.start_ms / 1000, UTC).isoformat(), dict(outcomes) or "nothing pending")

    def _flushed(self, producer: Producer) -> None:
        """Wait until every output produced so far is acknowledged; `DeliveryFailed` if one is not."""
        remaining = producer.flush(self.settings.kafka_timeout_s * 3)
        if remaining or self._failures:
            failures, self._failures = self._failures[:5], []
            raise DeliveryFailed(
                f"{remaining} outputs unacknowledged, {len(failures)} failed ({'; '.join(failures)}); "
                "offsets not committed, the batch is replayed on restart"
            )

    def _wait_for_registry(self, consumer: Consumer, positions: dict[tuple[str, int], int], error: RegistryError) -> None:
        """Rewind to the first message not decided, and wait before trying again (bounded backoff)."""
        for (topic, partition), offset in positions.items():
            consumer.seek(TopicPartition(topic, partition, offset))
        self.registry_waits += 1
        delay = REGISTRY_BACKOFF_S[min(self.registry_waits - 1, len(REGISTRY_BACKOFF_S) - 1)]
        if self.registry_waits == 1:
            log.warning("schema registry unavailable (%s); the data plane waits and reads the rest again", type(error).__name__)
        self._stop.wait(delay)

    def _produce(self, producer: Producer, produce, topic, key, value, headers, on_delivery,  # noqa: ANN001
                 timestamp: int = 0, partition: int | None = None) -> None:
        deadline = None
        placed = {} if partition is None else {"partition": partition}
        while True:
            try:
                produce(topic, value, key, headers=headers, on_delivery=on_delivery, timestamp=timestamp, **placed)
                return
            except BufferError:
                # Local queue full: serve delivery reports until there is room, bounded in time.
                deadline = deadline or time.monotonic() + self.settings.kafka_timeout_s * 3
                if time.monotonic() > deadline:
                    raise DeliveryFailed(f"producer queue stayed full for {self.settings.kafka_timeout_s * 3:g}s") from None
                producer.poll(0.05)
