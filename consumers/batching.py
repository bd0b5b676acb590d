"""The batching consumer loop every sink runs, apart from where the batch goes.

`BatchingSink` consumes a subscription with a consumer group, collects messages into a batch and
lands it when it is full (`batch_rows`), `batch_seconds` old, or, sooner, when nothing more is
waiting and it has waited as long as the last write took (at least `sink_batch_min_seconds`): small
batches at light load, full ones under a backlog, and the time writing at most about half. It hands the batch to
its `Target`, dead-letters what the target rejects (`backbone.kafka.dlq` contract, acknowledged by the
broker), and only then commits the offsets. A target that cannot write raises: nothing is
committed, and the batch is read again after a restart. On a rebalance the batch held is landed
and committed before the partitions go. After each batch an optional hook runs (e.g. fraud rules).

A target is one class with `setup()`, `write(messages) -> Written` and `close()`: ClickHouse
(`consumers.clickhouse_target`) is one; another store (files, a second database) is another class.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

from backbone.errors import BackboneError, SinkError
from backbone.kafka import dlq
from backbone.kafka.topics import Topics, dlq_topic
from backbone.settings import Settings

log = logging.getLogger("backbone.sink")

DLQ_TOPIC = dlq_topic(dlq.SINK)
# Waits between attempts to write a batch while the target is unavailable (the last one repeats).
RETRY_BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0, 10.0)
# A sink waiting out an outage does not poll its consumer: the group keeps it this long.
MAX_POLL_INTERVAL_MS = 1_800_000


class TargetUnavailable(BackboneError):
    """The target, or what it depends on (a database, the schema registry), cannot take a batch
    right now. The loop keeps the batch, commits nothing and writes it again after a backoff:
    infrastructure trouble is never dead-lettered."""


@dataclass(slots=True, frozen=True)
class Rejection:
    """A message the target will not hold: a `backbone.kafka.dlq` reason code and an optional detail
    that never carries record content."""

    message: Message
    reason: str
    detail: str | None = None


@dataclass(slots=True)
class Written:
    """What a target did with one batch: rows landed, messages rejected, and where it wrote
    (destination keys handed to the after-batch hook)."""

    landed: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    destinations: set[Hashable] = field(default_factory=set)


class Target(Protocol):
    """Where a sink's batches go. `write` must hold every message it does not reject before it
    returns (the loop commits right after), and raise when it cannot write at all; `close` may be
    called more than once."""

    name: str

    def setup(self) -> None: ...
    def write(self, messages: list[Message]) -> Written: ...
    def close(self) -> None: ...


@dataclass(slots=True)
class SinkStats:
    landed: int = 0
    dead_lettered: int = 0
    dead_letter_reasons: Counter[str] = field(default_factory=Counter)  # dead letters by reason code
    retries: int = 0  # writes that met an unavailable target and were tried again
    batches: int = 0
    commits: int = 0
    # where the time goes, in seconds: waiting in consume, writing, committing, the after-batch hook
    consume_s: float = 0.0
    insert_s: float = 0.0
    commit_s: float = 0.0
    hook_s: float = 0.0


class BatchingSink:
    """Consumes `subscription` (a topic, or a `^regex`) as `group_id` and lands it through `target`.

    `run(stop_event)` in a thread, or `run_until_idle()` to drain what is there; `close()` when done.
    """

    def __init__(
        self,
        settings: Settings,
        target: Target,
        *,
        group_id: str,
        subscription: str,
        batch_rows: int | None = None,
        batch_seconds: float | None = None,
        after_batch: Callable[[set[Hashable]], None] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.target = target
        self.name = target.name
        self.group_id = group_id
        self.subscription = subscription
        self.batch_rows = batch_rows or settings.sink_batch_rows
        self.batch_seconds = batch_seconds or settings.sink_batch_seconds
        self.batch_min_seconds = min(settings.sink_batch_min_seconds, self.batch_seconds)
        self._last_write_s = 0.0  # how long the last batch took to write: the next one waits as long
        self.after_batch = after_batch
        self.on_close = on_close
        self.stats = SinkStats()
        # called after each landed batch with (sink name, rows landed, seconds writing): metrics
        self.on_batch: Callable[[str, int, float], None] | None = None
        self._pending: list[Message] = []
        self._deadline = 0.0  # the batch held lands by then at the latest
        self._land_from = 0.0  # ... and from then on, as soon as nothing more is waiting
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._undelivered: list[str] = []
        self._ready = False
        self._leads = False
        self._waiting_logged = False  # "the topic does not exist yet", said once
        self._stop_requested: threading.Event | None = None

    def setup(self) -> None:
        """Prepare the target (databases, tables, ...) and the DLQ topic; idempotent."""
        if self._ready:
            return
        self.target.setup()
        Topics(self.settings).ensure(DLQ_TOPIC, config=dlq.topic_config(self.settings))
        self._ready = True

    # the loop -------------------------------------------------------------------------------
    def _open(self) -> Consumer:
        if self._consumer is None:
            self.setup()
            config = self.settings.consumer_config(
                self.group_id,
                **{"topic.metadata.refresh.interval.ms": 2000, "fetch.wait.max.ms": 100, "enable.partition.eof": False,
                   "max.poll.interval.ms": MAX_POLL_INTERVAL_MS},
            )
            self._consumer = Consumer(config)
            self._producer = Producer(self.settings.producer_config())
            self._consumer.subscribe([self.subscription], on_assign=self._on_assign, on_revoke=self._on_revoke)
        return self._consumer

    def leads(self) -> bool:
        """True while this member holds partition 0 of the first topic of its subscription (sorted):
        the consumer group gives that to exactly one member at a time, so work that must happen once
        across replicas (publishing fraud alerts) is done by the member that leads. Kept up to date
        on the sink's own thread at each assignment; safe to read from any thread."""
        return self._leads

    def _on_assign(self, consumer: Consumer, partitions: list) -> None:
        # runs on the sink's thread, inside consume(): the only thread that touches the consumer
        assigned = {(tp.topic, tp.partition) for tp in partitions}
        if self.subscription.startswith("^"):
            try:
                topics = consumer.list_topics(timeout=self.settings.kafka_timeout_s).topics
            except KafkaException:
                topics = {}
            pattern = re.compile(self.subscription)
            matching = sorted(topic for topic in topics if pattern.match(topic))
        else:
            matching = [self.subscription]
        self._leads = bool(matching) and (matching[0], 0) in assigned

    def _on_revoke(self, consumer: Consumer, partitions: list) -> None:
        # land and commit what we hold before another member takes these partitions over
        self._leads = False
        self.flush()

    def poll(self, timeout: float = 0.5) -> int:
        """Consume once; land and commit when the batch is full or old enough. Returns messages read."""
        consumer = self._open()
        room = min(max(1, self.batch_rows - len(self._pending)), 10_000)
        # librdkafka's consume() waits for `room` messages or the whole timeout, whichever comes
        # first: with a batch held, wait no longer than until it may land; with none, take what is
        # waiting, or wait for the first message only (not for a full batch).
        started = time.perf_counter()
        if self._pending:
            timeout = max(0.0, min(timeout, self._land_from - time.monotonic(), self._deadline - time.monotonic()))
            messages = consumer.consume(num_messages=room, timeout=timeout)
        else:
            messages = consumer.consume(num_messages=room, timeout=0) or consumer.consume(num_messages=1, timeout=min(timeout, self.batch_seconds))
        self.stats.consume_s += time.perf_counter() - started
        read = 0
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:  # not made yet (audit.operations: at the first
                    if not self._waiting_logged:                        # operator action); librdkafka subscribes once it is
                        log.info("sink %s: %s does not exist yet; it is read once created", self.name, self.subscription)
                        self._waiting_logged = True
                elif not error.retriable() and error.code() != KafkaError._PARTITION_EOF:
                    log.warning("sink %s: consumer error %s", self.name, error.str())
                continue
            if not self._pending:
                first = time.monotonic()
                self._deadline = first + self.batch_seconds
                self._land_from = first + min(self.batch_seconds, max(self.batch_min_seconds, self._last_write_s))
            self._pending.append(message)
            read += 1
        now = time.monotonic()
        drained = len(messages) < room  # consume() gave what was waiting, not a full request
        if self._pending and (len(self._pending) >= self.batch_rows or now >= self._deadline or (drained and now >= self._land_from)):
            self.flush()
        return read

    def run(self, stop: threading.Event) -> None:
        """Land until `stop` is set; what is pending is landed and committed before returning."""
        self._stop_requested = stop
        try:
            while not stop.is_set():
                self.poll(0.5)
            self.flush()
        finally:
            self.close()

    def run_until_idle(self, idle_s: float = 2.0, timeout_s: float = 120.0) -> SinkStats:
        """Land until no message arrived for `idle_s` after partitions were assigned (or `timeout_s`)."""
        consumer = self._open()
        started = last = time.monotonic()
        while time.monotonic() - started < timeout_s:
            now = time.monotonic()
            if self.poll(0.2):
                last = time.monotonic()
            elif not consumer.assignment() and self._subscribed_topics_exist(consumer):
                # joining takes up to a session timeout (longer after a crash: the dead member's
                # session must expire first); a subscription matching no topic never gets partitions
                last = now
            elif now - last >= idle_s:
                break
        self.flush()
        return self.stats

    def _subscribed_topics_exist(self, consumer: Consumer) -> bool:
        try:
            topics = consumer.list_topics(timeout=self.settings.kafka_timeout_s).topics
        except KafkaException:
            return True
        if self.subscription.startswith("^"):
            pattern = re.compile(self.subscription)
            return any(pattern.match(topic) for topic in topics)
        return self.subscription in topics

    def flush(self) -> None:
        """Write every pending message through the target, dead-letter its rejections, then commit."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        started = time.perf_counter()
        written = self._write(pending)
        for rejection in written.rejected:
            self._dead_letter(rejection)
        self.stats.landed += written.landed
        landed = time.perf_counter()
        self._last_write_s = landed - started
        self.stats.insert_s += landed - started
        assert self._producer is not None and self._consumer is not None
        if self._producer.flush(self.settings.kafka_timeout_s) > 0 or self._undelivered:
            failures, self._undelivered = self._undelivered[:3], []
            raise SinkError(f"sink {self.name}: dead letters not acknowledged by {DLQ_TOPIC} ({'; '.join(failures) or 'timed out'}); "
                            "offsets not committed, restart to resume")
        try:
            self._consumer.commit(asynchronous=False)
            self.stats.commits += 1
        except KafkaException as exc:
            # rows are landed; a redelivery after this collapses on the event id
            log.warning("sink %s: offset commit failed (%s); the batch will be re-read and deduplicated", self.name, exc.args[0].str())
        self.stats.batches += 1
        committed = time.perf_counter()
        self.stats.commit_s += committed - landed
        if self.on_batch is not None:
            self.on_batch(self.name, written.landed, landed - started)
        if self.after_batch is not None and written.destinations:
            self.after_batch(written.destinations)
            self.stats.hook_s += time.perf_counter() - committed

    def _write(self, pending: list[Message]) -> Written:
        """The target's write, again and again with backoff while it is unavailable; a stop asked
        meanwhile ends the sink without committing (the batch is read again after a restart)."""
        attempt = 0
        while True:
            try:
                written = self.target.write(pending)
            except TargetUnavailable as exc:
                delay = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
                if attempt == 0:
                    log.warning("sink %s: %s; the batch of %d waits and is written again (nothing committed meanwhile)",
                                self.name, exc, len(pending))
                attempt += 1
                self.stats.retries += 1
                if self._stop_requested is not None and self._stop_requested.wait(delay):
                    raise SinkError(f"sink {self.name}: stopped while waiting for its target ({exc}); offsets not committed") from None
                if self._stop_requested is None:
                    time.sleep(delay)
                continue
            if attempt:
                log.info("sink %s: target answers again after %d attempts; batch written", self.name, attempt)
            return written

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._undelivered.append(error.str())

    def _dead_letter(self, rejection: Rejection) -> None:
        assert self._producer is not None
        message = rejection.message
        headers = dlq.headers(dlq.SINK, rejection.reason, message.topic(), partition=message.partition(),
                              offset=message.offset(), detail=rejection.detail, original=list(message.headers() or []))
        self._producer.produce(DLQ_TOPIC, key=message.key(), value=message.value(), headers=headers, on_delivery=self._on_delivery)
        self._producer.poll(0)
        self.stats.dead_lettered += 1
        self.stats.dead_letter_reasons[rejection.reason] += 1
        log.warning("sink %s: %s[%s]@%s to %s: %s%s", self.name, message.topic(), message.partition(), message.offset(),
                    DLQ_TOPIC, rejection.reason, f" ({rejection.detail})" if rejection.detail else "")

    def close(self) -> None:
        """Leave the consumer group, flush the DLQ producer and close the target (pending rows are
        not landed: they are read again by the next member)."""
        if self._consumer is not None:
            try:
                self._consumer.close()
            except RuntimeError:
                pass
            self._consumer = None
        if self._producer is not None:
            self._producer.flush(self.settings.kafka_timeout_s)
            self._producer = None
        self.target.close()
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close()


class SinkThreads:
    """Runs sinks on threads of this process, one each: until `stop()`, or with `idle_s` until each
    had nothing to read for that long. A sink that fails is recorded in `failures` (and the others
    are stopped); `check()` raises its error."""

    def __init__(self, sinks: list[BatchingSink], idle_s: float | None = None) -> None:
        self.sinks = sinks
        self.idle_s = idle_s
        self.failures: list[tuple[str, BaseException]] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> SinkThreads:
        for sink in self.sinks:
            sink.setup()
            thread = threading.Thread(target=self._land, args=(sink,), name=f"sink-{sink.name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _land(self, sink: BatchingSink) -> None:
        try:
            if self.idle_s is None:
                sink.run(self._stop)
            else:
                try:
                    sink.run_until_idle(idle_s=self.idle_s)
                finally:
                    sink.close()
        except BaseException as exc:  # noqa: BLE001 - kept for check(); every other sink stops too
            self.failures.append((sink.name, exc))
            self._stop.set()

    def alive(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def check(self) -> None:
        """Raise the first failure, or a `SinkError` naming a sink whose thread ended unasked."""
        if self.failures:
            raise self.failures[0][1]
        for thread, sink in zip(self._threads, self.sinks, strict=True):
            if not thread.is_alive() and not self._stop.is_set() and self.idle_s is None:
                raise SinkError(f"sink {sink.name} stopped; see the log above")

    def join(self, timeout: float) -> None:
        for thread in self._threads:
            thread.join(timeout=timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Land and commit what each sink holds, close them, and wait for their threads."""
        self._stop.set()
        self.join(timeout)
