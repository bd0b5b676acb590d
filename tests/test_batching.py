"""The batching sink loop, apart from any database: batches by size and time, commits only after the
target holds the batch, dead-letters what the target rejects under the one DLQ contract, and loses
nothing when the target fails. The target here is `MemoryTarget`, a complete implementation of the
target protocol that keeps what it is given in memory (the ClickHouse target is in test_sink.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable

import pytest
from confluent_kafka import Message, Producer

from backbone.errors import SinkError
from backbone.kafka import dlq
from backbone.kafka.topics import Topics
from backbone.settings import Settings
from consumers.batching import DLQ_TOPIC, BatchingSink, Rejection, SinkThreads, TargetUnavailable, Written
from tests.pipeline import read_topic

pytestmark = pytest.mark.integration


class MemoryTarget:
    """Holds every batch it is given, keyed by topic; rejects empty values (`empty_value`), and
    raises while `failing` is set, as a database that is down would."""

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.batches: list[list[tuple[str, int, int, bytes | None, bytes]]] = []
        self.failing = False
        self.unavailable_writes = 0  # how many writes to refuse as "down for now" before taking them
        self.closed = 0

    def setup(self) -> None:
        pass

    def write(self, messages: list[Message]) -> Written:
        if self.failing:
            raise SinkError(f"target {self.name} is down")
        if self.unavailable_writes:
            self.unavailable_writes -= 1
            raise TargetUnavailable(f"target {self.name} is unavailable for now")
        written = Written()
        batch = []
        for message in messages:
            if not message.value():
                written.rejected.append(Rejection(message, "empty_value"))
                continue
            batch.append((message.topic(), message.partition(), message.offset(), message.key(), message.value()))
            written.destinations.add(message.topic())
        self.batches.append(batch)
        written.landed = len(batch)
        return written

    def close(self) -> None:
        self.closed += 1

    @property
    def values(self) -> list[bytes]:
        return [value for batch in self.batches for *_, value in batch]


def produce(settings: Settings, topic: str, values: list[bytes | None], partitions: int = 2) -> None:
    Topics(settings).ensure(topic, partitions=partitions)
    producer = Producer(settings.producer_config())
    for index, value in enumerate(values):
        producer.produce(topic, key=f"k{index}".encode(), value=value, headers=[("origin", b"test")])
    assert producer.flush(10) == 0


def sink(settings: Settings, target: MemoryTarget, topic: str, group: str, **options: object) -> BatchingSink:
    return BatchingSink(settings, target, group_id=group, subscription=topic, **options)


def test_every_message_is_written_once_in_batches_no_larger_than_batch_rows(settings: Settings, unique: str) -> None:
    topic = f"batching.{unique}"
    values = [f"v{i}".encode() for i in range(230)]
    produce(settings, topic, values)
    target = MemoryTarget()
    seen: list[set[Hashable]] = []
    each = sink(settings, target, topic, f"g-{unique}", batch_rows=50, batch_seconds=0.3, after_batch=seen.append)
    stats = each.run_until_idle(idle_s=1.5, timeout_s=60)
    each.close()
    assert sorted(target.values) == sorted(values)
    assert all(len(batch) <= 50 for batch in target.batches)
    assert stats.landed == 230 and stats.batches == len(target.batches) >= 5
    assert seen and all(destinations == {topic} for destinations in seen), "the hook hears where each batch went"
    assert target.closed == 1

    # offsets were committed after each batch: the group has nothing left to read
    again = MemoryTarget()
    second = sink(settings, again, topic, f"g-{unique}", batch_rows=50, batch_seconds=0.3)
    second.run_until_idle(idle_s=1.5, timeout_s=60)
    second.close()
    assert again.values == []


def test_a_batch_is_written_after_batch_seconds_even_when_not_full(settings: Settings, unique: str) -> None:
    topic = f"batching.{unique}"
    produce(settings, topic, [b"one", b"two", b"three"])
    target = MemoryTarget()
    each = sink(settings, target, topic, f"g-{unique}", batch_rows=1000, batch_seconds=0.2)
    stop = threading.Event()
    runner = threading.Thread(target=each.run, args=(stop,), daemon=True)
    runner.start()
    deadline = time.monotonic() + 30
    while len(target.values) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    runner.join(30)
    assert sorted(target.values) == [b"one", b"three", b"two"]


def test_at_light_load_a_batch_lands_once_nothing_more_is_waiting_not_after_batch_seconds(settings: Settings, unique: str) -> None:
    topic = f"batching.{unique}"
    produce(settings, topic, [b"one", b"two", b"three"])
    target = MemoryTarget()
    each = sink(settings, target, topic, f"g-{unique}", batch_rows=1000, batch_seconds=120)
    stop = threading.Event()
    runner = threading.Thread(target=each.run, args=(stop,), daemon=True)
    runner.start()
    deadline = time.monotonic() + 60  # half of batch_seconds: only the adaptive landing gets there
    while len(target.values) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    landed = sorted(target.values)
    stop.set()
    runner.join(30)
    assert landed == [b"one", b"three", b"two"]


def test_a_topic_not_created_yet_is_waited_for_quietly_and_read_once_it_is(settings: Settings, unique: str,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    """`audit.operations` exists from the first operator action on: its sink starts before that (the
    broker creates no topic on a subscription, as the production cluster): one line saying it waits,
    no "consumer error" warnings, and the records once it exists."""
    topic = f"batching.{unique}"
    target = MemoryTarget()
    each = sink(settings, target, topic, f"g-{unique}", batch_rows=1000, batch_seconds=0.2)
    with caplog.at_level("INFO", logger="backbone.sink"):
        for _ in range(15):
            each.poll(0.2)
        produce(settings, topic, [b"one", b"two"])
        deadline = time.monotonic() + 60
        while len(target.values) < 2 and time.monotonic() < deadline:
            each.poll(0.2)
    each.close()
    assert sorted(target.values) == [b"one", b"two"]
    said = [r for r in caplog.records if r.name == "backbone.sink" and each.name in r.getMessage()]
    assert [r.levelname for r in said if "does not exist yet" in r.getMessage()] == ["INFO"], [r.getMessage() for r in said]
    assert not [r for r in said if r.levelno >= 30], [r.getMessage() for r in said]


def test_under_a_backlog_batches_fill_up_to_batch_rows(settings: Settings, unique: str) -> None:
    topic = f"batching.{unique}"
    produce(settings, topic, [f"v{i}".encode() for i in range(3000)], partitions=1)
    target = MemoryTarget()
    each = sink(settings, target, topic, f"g-{unique}", batch_rows=600, batch_seconds=120)
    each.run_until_idle(idle_s=1.5, timeout_s=60)
    each.close()
    sizes = [len(batch) for batch in target.batches]
    assert sum(sizes) == 3000
    assert max(sizes) == 600 and len(sizes) <= 7, sizes  # a waiting backlog is landed in full batches


def test_rejected_messages_go_to_the_sink_dlq_with_the_contract_headers_and_original_bytes(settings: Settings, unique: str) -> None:
    topic = f"batching.{unique}"
    produce(settings, topic, [b"good", None, b"also good"], partitions=1)
    target = MemoryTarget()
    each = sink(settings, target, topic, f"g-{unique}", batch_rows=10, batch_seconds=0.2)
    stats = each.run_until_idle(idle_s=1.5, timeout_s=60)
    each.close()
    assert sorted(target.values) == [b"also good", b"good"]
    assert stats.dead_lettered == 1

    letters = [dlq.DeadLetter.from_message(m) for m in read_topic(
        settings, DLQ_TOPIC, lambda ms: any(dlq.DeadLetter.from_message(m).source_topic == topic for m in ms), timeout=20)]
    mine = [letter for letter in letters if letter.source_topic == topic]
    assert len(mine) == 1
    letter = mine[0]
    assert (letter.stage, letter.reason, letter.partition, letter.offset) == ("sink", "empty_value", 0, 1)
    assert letter.key == b"k1" and not letter.value
    assert letter.original_headers == [("origin", b"test")]


def test_a_failing_target_commits_nothing_and_the_batch_is_read_again(settings: Settings, unique: str) -> None:
    topic = f"batching.{unique}"
    values = [f"v{i}".encode() for i in range(40)]
    produce(settings, topic, values)
    down = MemoryTarget()
    down.failing = True
    first = sink(settings, down, topic, f"g-{unique}", batch_rows=1000, batch_seconds=0.2)
    with pytest.raises(SinkError, match="is down"):
        first.run_until_idle(idle_s=1.5, timeout_s=60)
    first.close()
    assert down.values == []

    up = MemoryTarget()
    second = sink(settings, up, topic, f"g-{unique}", batch_rows=1000, batch_seconds=0.2)
    second.run_until_idle(idle_s=1.5, timeout_s=60)
    second.close()
    assert sorted(up.values) == sorted(values), "nothing is lost when the target fails"


def test_an_unavailable_target_is_retried_until_it_takes_the_batch_and_nothing_is_dead_lettered(
    settings: Settings, unique: str
) -> None:
    topic = f"batching.{unique}"
    values = [f"v{i}".encode() for i in range(25)]
    produce(settings, topic, values)
    target = MemoryTarget()
    target.unavailable_writes = 3
    each = sink(settings, target, topic, f"g-{unique}", batch_rows=1000, batch_seconds=0.2)
    stats = each.run_until_idle(idle_s=1.5, timeout_s=60)
    each.close()
    assert sorted(target.values) == sorted(values), "every message written once, after the outage"
    assert stats.retries == 3 and stats.dead_lettered == 0


def test_sink_threads_report_a_failed_sink_and_stop_the_others(settings: Settings, unique: str) -> None:
    topic = f"batching.{unique}"
    produce(settings, topic, [b"x"] * 5)
    down, fine = MemoryTarget("down"), MemoryTarget("fine")
    down.failing = True
    runner = SinkThreads([
        sink(settings, down, topic, f"g-down-{unique}", batch_seconds=0.2),
        sink(settings, fine, f"batching.other.{unique}", f"g-fine-{unique}", batch_seconds=0.2),
    ]).start()
    deadline = time.monotonic() + 60
    while runner.alive() and time.monotonic() < deadline:
        runner.join(0.2)
    assert not runner.alive(), "one failure stops every sink"
    with pytest.raises(SinkError, match="is down"):
        runner.check()
    assert [name for name, _ in runner.failures] == ["down"]
