"""The record APIs of the disk broker: Produce (with the idempotent producer's sequence checks),
Fetch (long-polling up to max wait until min bytes are there), ListOffsets, DeleteRecords and
InitProducerId. Each handler takes the kio request and returns the response body as a dict.

Idempotence as Kafka does it for the last batches of each producer and partition: a batch whose
sequence the broker already has is answered with the offset it got the first time (librdkafka's
retry after a lost answer does not write twice); one that skips a sequence gets
OUT_OF_ORDER_SEQUENCE_NUMBER. The sequences live in memory: after a restart a producer's next
batch starts its partition's record anew.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections import deque
from typing import Any

from kio.schema.errors import ErrorCode

from backbone.broker.log import PRODUCER, PRODUCER_AT, CorruptBatch, batch_info, split_batches
from backbone.broker.state import BrokerState
from backbone.broker.wire import ms

KEEP_BATCHES = 5  # as Kafka: the last 5 batches of each producer and partition are remembered
KEEP_PRODUCERS = 10_000  # producer ids whose sequences are kept; the oldest go first (every client start makes one)
EARLIEST, LATEST, MAX_TIMESTAMP = -2, -1, -3


def attr(entity: Any, *names: str, default: Any = None) -> Any:
    """The first of `names` the request has at its version (fields were renamed across versions)."""
    for name in names:
        if hasattr(entity, name):
            return getattr(entity, name)
    return default



def partition_log(topic: Any, index: int) -> Any:
    """The log of partition `index` of `topic` (None: no such topic or partition)."""
    return topic.logs[index] if topic is not None and 0 <= index < len(topic.logs) else None

class DataApis:
    def __init__(self, state: BrokerState) -> None:
        self.state = state
        self.appended = asyncio.Event()  # set on every append: wakes long-polling fetches
        # producer id -> (topic, partition) -> recent (first seq, last seq, base offset)
        self.sequences: dict[int, dict[tuple[str, int], deque[tuple[int, int, int]]]] = {}
        self.epochs: dict[int, int] = {}

    def _wake(self) -> None:
        self.appended.set()
        self.appended = asyncio.Event()

    # --- Produce
    def produce(self, request: Any) -> dict[str, Any]:
        responses = []
        for topic_data in request.topic_data:
            topic = self.state.topics.get(topic_data.name)
            parts = []
            for data in topic_data.partition_data:
                parts.append({"index": data.index, **self._produce_partition(topic, topic_data.name, data.index, data.records)})
            responses.append({"name": topic_data.name, "partition_responses": parts})
        self._wake()
        return {"responses": responses, "throttle_time": 0}

    def _produce_partition(self, topic: Any, name: str, partition: int, records: bytes | None) -> dict[str, Any]:
        if partition_log(topic, partition) is None:
            return {"error_code": ErrorCode.unknown_topic_or_partition, "base_offset": -1, "log_append_time": -1, "log_start_offset": -1}
        log = topic.logs[partition]
        first = -1
        try:
            batches = split_batches(records or b"")
            limit = int(topic.config("max.message.bytes"))
            if any(len(b) > limit + 12 for b in batches):
                return {"error_code": ErrorCode.message_too_large, "base_offset": -1, "log_append_time": -1, "log_start_offset": log.log_start}
            for batch in batches:
                batch_info(batch)
                producer_id, epoch, sequence = PRODUCER.unpack_from(batch, PRODUCER_AT)
                if producer_id >= 0 and sequence >= 0:
                    outcome = self._check_sequence(producer_id, epoch, name, partition, batch, sequence)
                    if isinstance(outcome, int):
                        if outcome >= 0:  # a duplicate: its first offset
                            first = outcome if first < 0 else first
                            continue
                        return {"error_code": -outcome, "base_offset": -1, "log_append_time": -1, "log_start_offset": log.log_start}
                base, _ = log.append(batch)
                if producer_id >= 0 and sequence >= 0:
                    self._remember(producer_id, name, partition, batch, sequence, base)
                first = base if first < 0 else first
        except CorruptBatch:
            return {"error_code": ErrorCode.corrupt_message, "base_offset": -1, "log_append_time": -1, "log_start_offset": log.log_start}
        return {"error_code": 0, "base_offset": first, "log_append_time": -1, "log_start_offset": log.log_start}

    def _check_sequence(self, producer_id: int, epoch: int, name: str, partition: int, batch: Any, sequence: int) -> int | None:
        """None: append it; an offset >= 0: a duplicate of that batch; -error code: refuse it."""
        known = self.epochs.get(producer_id)
        if known is not None and epoch < known:
            return -int(ErrorCode.invalid_producer_epoch)
        if known is None or epoch > known:
            self.epochs[producer_id] = epoch
            self.sequences.pop(producer_id, None)
        recent = self.sequences.get(producer_id, {}).get((name, partition))
        if not recent:
            return None  # a new producer (or one from before a restart) starts where it is
        for first, _, base in recent:
            if first == sequence:
                return base
        last = recent[-1][1]
        if sequence != (last + 1) & 0x7FFFFFFF:
            if sequence <= last:
                return -int(ErrorCode.duplicate_sequence_number)
            return -int(ErrorCode.out_of_order_sequence_number)
        return None

    def _remember(self, producer_id: int, name: str, partition: int, batch: Any, sequence: int, base: int) -> None:
        (delta,) = struct.unpack_from(">i", batch, 23)
        recent = self.sequences.setdefault(producer_id, {}).setdefault((name, partition), deque(maxlen=KEEP_BATCHES))
        recent.append((sequence, sequence + delta, base))

    def init_producer_id(self, request: Any) -> dict[str, Any]:
        if attr(request, "transactional_id"):
            return {"error_code": ErrorCode.transactional_id_authorization_failed, "producer_id": -1, "producer_epoch": -1, "throttle_time": 0}
        producer_id = self.state.new_producer_id()
        self.epochs[producer_id] = 0
        while len(self.epochs) > KEEP_PRODUCERS:  # memory stays flat however many clients come and go
            oldest = next(iter(self.epochs))
            del self.epochs[oldest]
            self.sequences.pop(oldest, None)
        return {"error_code": 0, "producer_id": producer_id, "producer_epoch": 0, "throttle_time": 0}

    # --- Fetch
    async def fetch(self, request: Any) -> dict[str, Any]:
        deadline = time.monotonic() + ms(request.max_wait) / 1000
        while True:
            waiter = self.appended
            responses, size = self._fetch_once(request)
            remaining = deadline - time.monotonic()
            if size >= max(request.min_bytes, 1) or remaining <= 0 or any(
                    p["error_code"] for r in responses for p in r["partitions"]):
                return {"throttle_time": 0, "error_code": 0, "session_id": 0, "responses": responses}
            try:
                await asyncio.wait_for(waiter.wait(), remaining)
            except TimeoutError:
                pass

    def _fetch_once(self, request: Any) -> tuple[list[dict[str, Any]], int]:
        budget = max(attr(request, "max_bytes", default=52_428_800), 1)
        responses, size = [], 0
        for wanted in request.topics:
            topic = self.state.topics.get(wanted.topic)
            parts = []
            for p in wanted.partitions:
                if partition_log(topic, p.partition) is None:
                    parts.append({"partition_index": p.partition, "error_code": ErrorCode.unknown_topic_or_partition,
                                  "high_watermark": -1, "last_stable_offset": -1, "log_start_offset": -1, "records": None,
                                  "preferred_read_replica": -1})
                    continue
                log = topic.logs[p.partition]
                error, records = 0, b""
                if p.fetch_offset < log.log_start or p.fetch_offset > log.end:
                    error = ErrorCode.offset_out_of_range
                elif budget > 0:
                    records = log.read(p.fetch_offset, min(p.partition_max_bytes, budget))
                    budget -= len(records)
                    size += len(records)
                parts.append({"partition_index": p.partition, "error_code": error, "high_watermark": log.end,
                              "last_stable_offset": log.end, "log_start_offset": log.log_start, "records": records,
                              "preferred_read_replica": -1, "aborted_transactions": []})
            responses.append({"topic": wanted.topic, "partitions": parts})
        return responses, size

    # --- ListOffsets, DeleteRecords
    def list_offsets(self, request: Any) -> dict[str, Any]:
        topics = []
        for wanted in request.topics:
            topic = self.state.topics.get(wanted.name)
            parts = []
            for p in wanted.partitions:
                if partition_log(topic, p.partition_index) is None:
                    parts.append({"partition_index": p.partition_index, "error_code": ErrorCode.unknown_topic_or_partition,
                                  "timestamp": -1, "offset": -1, "leader_epoch": -1})
                    continue
                log = topic.logs[p.partition_index]
                timestamp = p.timestamp
                if timestamp == EARLIEST:
                    offset = log.log_start
                elif timestamp in {LATEST, MAX_TIMESTAMP}:
                    offset = log.end
                else:
                    offset = log.offset_for_time(timestamp)
                parts.append({"partition_index": p.partition_index, "error_code": 0, "timestamp": -1, "offset": offset,
                              "leader_epoch": -1})
            topics.append({"name": wanted.name, "partitions": parts})
        return {"throttle_time": 0, "topics": topics}

    def delete_records(self, request: Any) -> dict[str, Any]:
        topics = []
        for wanted in request.topics:
            topic = self.state.topics.get(wanted.name)
            parts = []
            for p in wanted.partitions:
                if partition_log(topic, p.partition_index) is None:
                    parts.append({"partition_index": p.partition_index, "low_watermark": -1, "error_code": ErrorCode.unknown_topic_or_partition})
                    continue
                log = topic.logs[p.partition_index]
                if p.offset > log.end:
                    parts.append({"partition_index": p.partition_index, "low_watermark": log.log_start, "error_code": ErrorCode.offset_out_of_range})
                    continue
                parts.append({"partition_index": p.partition_index, "low_watermark": log.delete_before(p.offset), "error_code": 0})
            topics.append({"name": wanted.name, "partitions": parts})
        return {"throttle_time": 0, "topics": topics}
