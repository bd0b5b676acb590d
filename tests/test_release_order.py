"""What a shared record's Kafka metadata may carry: its timestamp is the released time, and a batch is
released in an order of its own per recipient topic (one subject's records keep theirs)."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime

import pytest
from confluent_kafka import Consumer, Producer
from hypothesis import given
from hypothesis import strategies as st

from backbone.kafka.topics import Topics
from backbone.policy.agreements import Agreement
from backbone.policy.released import released_period_days, released_timestamp_ms
from backbone.settings import Settings
from processors.dataplane import DataPlane
from processors.release_order import release_order


@dataclass(frozen=True)
class Out:
    topic: str
    key: bytes | None
    n: int


def test_a_timestamp_is_the_start_of_the_released_period() -> None:
    moment = datetime(2025, 7, 14, 9, 30, 12, 345000, tzinfo=UTC)
    assert released_timestamp_ms(moment) == int(moment.timestamp() * 1000)
    assert released_timestamp_ms(moment.replace(tzinfo=None)) == int(moment.timestamp() * 1000)  # naive is UTC
    assert released_timestamp_ms(2025) == int(datetime(2025, 1, 1, tzinfo=UTC).timestamp() * 1000)
    assert released_timestamp_ms("2025-07") == int(datetime(2025, 7, 1, tzinfo=UTC).timestamp() * 1000)
    assert released_timestamp_ms(date(2025, 7, 14)) == int(datetime(2025, 7, 14, tzinfo=UTC).timestamp() * 1000)


@given(st.one_of(st.none(), st.integers(-10**6, 0), st.integers(10_000, 10**9), st.floats(allow_nan=True), st.booleans(),
                 st.text(alphabet="0123456789-x", max_size=8).filter(lambda s: not (len(s) == 7 and s[4] == "-" and s[5:].isdigit()
                                                                                   and 1 <= int(s[5:]) <= 12 and s[:4].isdigit())),
                 st.datetimes(max_value=datetime(1969, 12, 31), timezones=st.just(UTC))))
def test_a_time_that_says_nothing_or_lies_before_1970_stamps_a_constant_kafka_accepts(value: object) -> None:
    # Kafka refuses negative timestamps and takes 0 for "now": never either
    assert released_timestamp_ms(value) == 1


def test_the_retention_period_grows_with_the_generalisation() -> None:
    base = {"id": "a", "version": 1, "title": "t", "provider": "welfare", "recipient": "research",
            "event_types": ["welfare.benefit_claimed"], "purposes": ["scientific_research"], "lawful_basis": "public_task",
            "valid_from": "2024-01-01", "status": "active", "retention_days": 30}
    def period(fields: dict) -> int:
        return released_period_days(Agreement.model_validate({**base, "fields": fields}))
    assert period({}) == 0 and period({"occurred_at": "keep"}) == 0
    assert period({"occurred_at": {"generalise": "day"}}) == 1
    assert period({"occurred_at": {"generalise": "month"}}) == 31
    assert period({"occurred_at": {"generalise": "year"}}) == 366


def test_one_keys_records_keep_their_order_and_every_record_is_released_once() -> None:
    outputs = [Out("shared.a.x", bytes([i % 5]), i) for i in range(200)] + [Out("shared.b.x", None, i) for i in range(200, 260)]
    released = release_order(outputs, random.Random(7).random)
    assert sorted(o.n for o in released) == list(range(260))
    for key in range(5):
        mine = [o.n for o in released if o.key == bytes([key])]
        assert mine == sorted(mine), "a subject's records on a topic keep their order"


def test_the_order_of_a_batch_is_drawn_anew_each_time() -> None:
    outputs = [Out("shared.a.x", str(i).encode(), i) for i in range(4)]
    seen = {tuple(o.n for o in release_order(outputs, random.Random(seed).random)) for seed in range(400)}
    assert len(seen) == 24, "every order of four subjects' records occurs"
    unkeyed = [Out("shared.a.x", None, i) for i in range(3)]
    assert len({tuple(o.n for o in release_order(unkeyed, random.Random(seed).random)) for seed in range(200)}) == 6


def test_the_default_order_comes_from_the_operating_systems_randomness() -> None:
    outputs = [Out("shared.a.x", str(i).encode(), i) for i in range(12)]
    orders = [tuple(o.n for o in release_order(outputs)) for _ in range(20)]
    assert len(set(orders)) == 20 and tuple(range(12)) not in orders  # 12! orders: a repeat is a broken source


def _trickle(settings: Settings, topic: str, count: int, every_s: float) -> threading.Thread:
    """Send `count` records to `topic`, one every `every_s` (a light, steady flow)."""
    def send() -> None:
        producer = Producer(settings.producer_config(**{"linger.ms": 0}))
        for n in range(count):
            producer.produce(topic, str(n).encode())
            producer.flush(5)
            time.sleep(every_s)
    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


@pytest.mark.integration
def test_under_a_light_flow_a_batch_gathers_its_mix_window_and_loses_nothing(settings: Settings, unique: str) -> None:
    """A processor that keeps up with a trickle would decide one event per batch, and one event's
    copies would then sit in the same order on every recipient's topic (the offsets link domains):
    a batch waits for what arrives within the release mix (BACKBONE_RELEASE_MIX_MS) so each
    recipient's copies are shuffled among those events. Nothing is skipped or repeated."""
    topic = f"raw.{unique}.trickle"
    Topics(settings).ensure(topic, partitions=1)
    consumer = Consumer(settings.consumer_config(f"g-{unique}", **{"fetch.wait.max.ms": 5}))
    consumer.subscribe([topic])
    try:
        while not consumer.assignment():
            assert DataPlane._next_batch(consumer, 5000, 0.3) == [], "nothing waiting: nothing decided"
        sender = _trickle(settings, topic, 40, 0.01)  # 40 records over at least 0.4 s
        batches: list[list[int]] = []
        deadline = time.monotonic() + 30
        while sum(map(len, batches)) < 40 and time.monotonic() < deadline:
            got = [m for m in DataPlane._next_batch(consumer, 5000, 0.3) if m.error() is None]
            if got:
                batches.append([int(m.value()) for m in got])
        sender.join(10)
        assert [n for batch in batches for n in batch] == list(range(40)), "every record once, in order"
        # one batch per record without the mix; with it, one per 0.3 s of the flow (at most 3 s here)
        assert len(batches) <= 10, f"each batch gathers its mix window: {list(map(len, batches))}"
    finally:
        consumer.close()
