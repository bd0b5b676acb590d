"""Read a whole compacted topic in every process that needs it: all partitions assigned, no consumer group.

Consent and agreement state must be complete in whichever worker handles an event, so each worker
reads the full topic itself (Faust's GlobalTable does not sync across workers: faust-streaming
issue #283). The topic is the changelog: a restarted worker rebuilds its state by reading it again.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from backbone.errors import KafkaUnavailableError
from backbone.settings import Settings

log = logging.getLogger(__name__)


class Retry(Exception):
    """Raised by an `apply` that cannot apply a record yet (the schema registry is down): the reader
    holds that record, retries it with backoff and applies nothing after it until it succeeds."""


RETRY_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
# Consumer errors after which the topic cannot be read as a whole any more: the reader dies.
_FATAL_CODES = frozenset({KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.TOPIC_AUTHORIZATION_FAILED,
                          KafkaError.GROUP_AUTHORIZATION_FAILED, KafkaError._UNKNOWN_PARTITION})


class CompactedTopicReader:
    """Applies every record of `topic` (from the beginning, then as it arrives) to `apply`, in order,
    in a thread.

    `apply(message)` runs on the reader thread and must be quick. It handles bad records itself (the
    state it keeps decides what a bad record means); it raises `Retry` to have the record applied
    again later, in order. Anything else it raises, or a consumer error after which the topic cannot
    be read whole, stops the reader: `error` says why and `alive` turns false, so the state's owner
    stops relying on it (the processor stops deciding). Errors name the offset, never the content.
    """

    def __init__(self, settings: Settings, topic: str, apply: Callable[[Message], None], name: str) -> None:
        self.settings = settings
        self.topic = topic
        self.apply = apply
        self.name = name
        self.applied = 0
        self.blocked: str | None = None  # why the reader waits to apply a record, while it does
        self._stop = threading.Event()
        self._caught_up = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def error(self) -> BaseException | None:
        return self._error

    @property
    def alive(self) -> bool:
        """Still applying records: started, not stopped, not failed."""
        return self._thread is not None and self._thread.is_alive() and self._error is None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def wait_caught_up(self, timeout: float) -> None:
        """Block until everything written before start-up has been applied."""
        if not self._caught_up.wait(timeout):
            if self._error is not None:
                raise self._error
            raise KafkaUnavailableError(f"{self.name}: could not read {self.topic} to its end within {timeout:g}s")

    @property
    def caught_up(self) -> bool:
        return self._caught_up.is_set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _consumer(self) -> tuple[Consumer, dict[int, int]]:
        # A group id is required by librdkafka but never joined: partitions are assigned, not subscribed.
        consumer = Consumer(self.settings.consumer_config(f"reader-{uuid.uuid4().hex}", **{"enable.partition.eof": True}))
        metadata = consumer.list_topics(self.topic, timeout=self.settings.kafka_timeout_s)
        partitions = sorted(metadata.topics[self.topic].partitions)
        ends: dict[int, int] = {}
        for partition in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=self.settings.kafka_timeout_s)
            if high > low:
                ends[partition] = high
        consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
        return consumer, ends

    def _run(self) -> None:
        try:
            consumer, ends = self._consumer()
        except (KafkaException, KafkaUnavailableError) as exc:
            self._error = KafkaUnavailableError(f"{self.name}: cannot read {self.topic}: {exc}")
            return
        pending = dict(ends)
        try:
            while not self._stop.is_set():
                messages = consumer.consume(1000, 0.2)
                for message in messages:
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            # Watermarks can lag what was written on some brokers: EOF is the real end.
                            pending.pop(message.partition(), None)
                        elif error.fatal() or error.code() in _FATAL_CODES:
                            raise KafkaUnavailableError(f"{self.name}: {self.topic} cannot be read any more ({error.str()})")
                        continue
                    partition = message.partition()
                    if partition in pending and message.offset() + 1 >= pending[partition]:
                        pending.pop(partition)
                    if not self._apply_in_order(message):
                        return  # stopped while waiting to apply
                    self.applied += 1
                if not pending and not self._caught_up.is_set():
                    self._caught_up.set()
        except BaseException as exc:  # noqa: BLE001 - the owner learns through `alive` and `error`
            self._error = exc
            log.error("%s stopped: %s", self.name, exc)
        finally:
            consumer.close()

    def _apply_in_order(self, message: Message) -> bool:
        """Apply one record, retrying it while `apply` raises `Retry`; False if stopped meanwhile."""
        attempt = 0
        while True:
            try:
                self.apply(message)
                if self.blocked:
                    log.info("%s: applying again from %s[%d]@%d", self.name, self.topic, message.partition(), message.offset())
                self.blocked = None
                return True
            except Retry as wait:
                if self.blocked is None:
                    log.warning("%s: record at %s[%d]@%d waits: %s", self.name, self.topic, message.partition(), message.offset(), wait)
                self.blocked = str(wait) or "retrying"
                if self._stop.wait(RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]):
                    return False
                attempt += 1


def read_to_end(settings: Settings, topic: str, timeout: float = 10.0) -> list[Message]:
    """Every message of `topic` now, read until end-of-partition on all partitions (bounded by `timeout`).

    For small operator topics (DLQs, alerts): reads by EOF, not by watermark, which some brokers
    report late.
    """
    consumer = Consumer(settings.consumer_config(f"reader-{uuid.uuid4().hex}", **{"enable.partition.eof": True}))
    try:
        metadata = consumer.list_topics(topic, timeout=settings.kafka_timeout_s)
        if topic not in metadata.topics or metadata.topics[topic].error is not None:
            return []
        partitions = set(metadata.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        messages: list[Message] = []
        ended: set[int] = set()
        deadline = time.monotonic() + timeout
        while ended != partitions and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.2):
                error = message.error()
                if error is None:
                    messages.append(message)
                elif error.code() == KafkaError._PARTITION_EOF:
                    ended.add(message.partition())
        return messages
    finally:
        consumer.close()
