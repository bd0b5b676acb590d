"""The `_schemas` topic as the registry's log: one reader thread applies every record to the state;
writers append and wait until their own record has been applied.

Only partition 0 is used, so all processes see one order. High watermarks on some brokers lag
behind what was written, so "caught up" means "read back a marker this process just wrote".
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from backbone.kafka.topics import Topics
from backbone.registry.errors import store_error
from backbone.registry.state import RegistryState, record_key
from backbone.settings import Settings

log = logging.getLogger("backbone.registry")
PARTITION = 0


class SchemaLog:
    """Reads the topic into `state` on a thread and appends records to it."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        self.state = RegistryState()
        self.lock = threading.Lock()  # guards `state`
        self._applied = threading.Condition(self.lock)
        self._node = uuid.uuid4().hex
        self._noop_count = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer: Producer | None = None
        self._consumer: Consumer | None = None
        self._reader_error: str | None = None

    @property
    def timeout_s(self) -> float:
        return self.settings.kafka_timeout_s

    def start(self) -> None:
        """Create the topic if missing, start reading it from the beginning, and catch up."""
        Topics(self.settings).ensure(self.topic, partitions=1, config={"cleanup.policy": "compact"})
        self._producer = Producer(self.settings.kafka_config(**{"acks": "all", "linger.ms": 0}))
        self._consumer = Consumer(
            self.settings.consumer_config(f"backbone-registry-{self._node}", **{"enable.partition.eof": False, "fetch.wait.max.ms": 10})
        )
        self._consumer.assign([TopicPartition(self.topic, PARTITION, OFFSET_BEGINNING)])
        self._thread = threading.Thread(target=self._read, name="schemas-reader", daemon=True)
        self._thread.start()
        self.sync()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._consumer is not None:
            self._consumer.close()
        if self._producer is not None:
            self._producer.flush(2)

    def _read(self) -> None:
        assert self._consumer is not None
        while not self._stop.is_set():
            try:
                first = self._consumer.poll(0.2)  # returns at the first record, unlike consume()
                messages = [first, *self._consumer.consume(499, 0)] if first is not None else []
            except Exception as exc:  # noqa: BLE001 - keep reading; writers time out with a store error
                self._reader_error = str(exc)
                time.sleep(0.2)
                continue
            if not messages:
                continue
            with self.lock:
                for message in messages:
                    if message.error() is not None:
                        if message.error().code() != KafkaError._PARTITION_EOF:  # noqa: SLF001
                            self._reader_error = message.error().str()
                        continue
                    try:
                        key = json.loads(message.key() or b"{}")
                        value = json.loads(message.value()) if message.value() is not None else None
                    except (ValueError, TypeError):
                        log.warning("skipping an undecodable record at offset %s of %s", message.offset(), self.topic)
                        self.state.position = max(self.state.position, message.offset())
                        continue
                    if isinstance(key, dict) and (value is None or isinstance(value, dict)):
                        self.state.apply(message.offset(), key, value)
                    else:
                        self.state.position = max(self.state.position, message.offset())
                self._applied.notify_all()

    def append(self, records: list[tuple[dict[str, Any], dict[str, Any] | None]]) -> int:
        """Write `records` in order to partition 0; return the offset of the last one."""
        assert self._producer is not None
        offsets: list[int] = []
        failures: list[str] = []

        def delivered(error: KafkaError | None, message: Any) -> None:
            if error is not None:
                failures.append(error.str())
            else:
                offsets.append(message.offset())

        for key, value in records:
            payload = None if value is None else json.dumps(value, separators=(",", ":")).encode()
            self._producer.produce(self.topic, value=payload, key=record_key(key), partition=PARTITION, on_delivery=delivered)
        remaining = self._producer.flush(self.timeout_s)
        if failures or remaining or len(offsets) != len(records):
            raise store_error(f"writing to topic {self.topic} failed ({'; '.join(failures) or 'timed out'})")
        return max(offsets)

    def wait_applied(self, offset: int) -> None:
        """Block until the reader has applied the record at `offset` (bounded by the Kafka timeout)."""
        deadline = time.monotonic() + self.timeout_s
        with self._applied:
            while self.state.position < offset:
                left = deadline - time.monotonic()
                if left <= 0:
                    detail = f"; last error: {self._reader_error}" if self._reader_error else ""
                    raise store_error(f"reading topic {self.topic} back did not reach offset {offset}{detail}")
                self._applied.wait(min(left, 0.5))

    def sync(self) -> None:
        """Catch up with every record written to the topic before this call, by anyone."""
        self._noop_count += 1
        offset = self.append([({"keytype": "NOOP", "node": self._node}, {"n": self._noop_count})])
        self.wait_applied(offset)
