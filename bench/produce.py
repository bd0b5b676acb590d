"""Avro events produced and acknowledged per second by the producer SDK, beside a bare
confluent-kafka producer sending the same pre-encoded bytes with the same keys and settings.

    python -m bench.produce [--events 100000] [--rounds 2] [--max-seconds 120]

Both write `welfare.benefit_claimed` events (synthetic) and count a run as done when every event
is acknowledged (idempotent, acks=all). The SDK also validates, fills nothing (ids are set),
hashes the subject key and encodes per event; the bare producer only calls `produce`.
Uses `BACKBONE_KAFKA_BOOTSTRAP` / `BACKBONE_SCHEMA_REGISTRY_URL` when both are set (writing to
throw-away `bench.*` topics it deletes), else starts the embedded broker and registry and stops them.
The target is SDK >= 70% of bare.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from confluent_kafka import Producer

from backbone.kafka.topics import Topics
from backbone.settings import Settings, load_settings
from producers.sdk import AgencyProducer
from producers.synthetic import generate

EVENT_TYPE = "welfare.benefit_claimed"
TARGET = 0.7


class BenchProducer(AgencyProducer):
    """The SDK unchanged, writing to a throw-away topic."""

    def __init__(self, settings: Settings, prefix: str) -> None:
        self.prefix = prefix
        super().__init__("welfare", settings)

    def _topic_for(self, event_type: str) -> str:
        return f"{self.prefix}.{event_type}"


@contextmanager
def backbone_settings(data_dir: Path) -> Iterator[tuple[Settings, bool]]:
    """Settings of the configured stack, else of a fresh embedded one (True: embedded)."""
    if os.environ.get("BACKBONE_KAFKA_BOOTSTRAP") and os.environ.get("BACKBONE_SCHEMA_REGISTRY_URL"):
        yield load_settings(data_dir=data_dir), False
        return
    from backbone.stack.embedded import EmbeddedStack

    with EmbeddedStack(data_dir) as stack:
        yield load_settings(data_dir=data_dir, **{k.removeprefix("BACKBONE_").lower(): v
                                                  for k, v in stack.environment().items()}), True


def run_sdk(settings: Settings, prefix: str, records: list[dict]) -> float:
    """Seconds to send `records` through the SDK until all are acknowledged."""
    batch = copy.deepcopy(records)  # the SDK fills headers in place; keep the input pristine
    producer = BenchProducer(settings, prefix)
    started = time.perf_counter()
    for record in batch:
        producer.send(EVENT_TYPE, record)
    stats = producer.close(timeout=60)
    elapsed = time.perf_counter() - started
    assert stats.delivered == len(records), stats.summary()
    return elapsed


def run_bare(settings: Settings, topic: str, messages: list[tuple[bytes, bytes]]) -> float:
    """Seconds for a bare confluent-kafka producer to send pre-encoded `messages` until all are acknowledged."""
    producer = Producer(settings.producer_config(partitioner="consistent_random"))
    producer.list_topics(topic, timeout=settings.kafka_timeout_s)
    delivered = 0

    def count(error: object, _message: object) -> None:
        nonlocal delivered
        delivered += error is None

    started = time.perf_counter()
    for index, (key, value) in enumerate(messages):
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=count)
                break
            except BufferError:
                producer.poll(0.05)
        if index % 1_000 == 0:
            producer.poll(0)
    remaining = producer.flush(60)
    elapsed = time.perf_counter() - started
    assert remaining == 0 and delivered == len(messages), f"{delivered} of {len(messages)} acknowledged"
    return elapsed


def run_bare_encoding(settings: Settings, topic: str, records: list[dict], encode, keys: list[bytes]) -> float:  # noqa: ANN001
    """Seconds for a bare producer that encodes each record with `backbone.events.serde` (no validation)."""
    started = time.perf_counter()
    messages = [(key, encode(record)) for key, record in zip(keys, records, strict=True)]
    return time.perf_counter() - started + run_bare(settings, topic, messages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-seconds", type=float, default=120.0, help="stop repeating rounds after this long")
    args = parser.parse_args()

    records = [r for _, r in generate(seed=1, population=max(1_000, args.events // 4), events=args.events,
                                      agencies=["welfare"])]
    prefix = f"bench.{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as directory, backbone_settings(Path(directory)) as (settings, embedded):
        topic = f"{prefix}.{EVENT_TYPE}"
        warm = BenchProducer(settings, prefix)  # creates the topic, registers the schema
        route = warm._routes[EVENT_TYPE]  # noqa: SLF001 - the bench pre-encodes with the SDK's own encoder
        messages = [(warm.subject_key(r["national_id"]), route.encode(r)) for r in records]
        warm.close()
        bare_topic = f"{prefix}.bare"
        Topics(settings).ensure(bare_topic)
        deadline = time.monotonic() + args.max_seconds
        keys = [key for key, _ in messages]
        bare, encoding, sdk = float("inf"), float("inf"), float("inf")
        try:
            for _ in range(args.rounds):
                bare = min(bare, run_bare(settings, bare_topic, messages))
                sdk = min(sdk, run_sdk(settings, prefix, records))
                encoding = min(encoding, run_bare_encoding(settings, bare_topic, records, route.encode, keys))
                if time.monotonic() > deadline:
                    break
        finally:
            if not embedded:
                for name in (topic, bare_topic):
                    Topics(settings).delete(name)
    bare_rate, sdk_rate = len(records) / bare, len(records) / sdk
    ratio = sdk_rate / bare_rate
    verdict = "ok" if ratio >= TARGET else f"below the {TARGET:.0%} target"
    print(f"{EVENT_TYPE}: {len(records):,} events, acks=all idempotent lz4, best of {args.rounds} rounds")
    print(f"bare confluent-kafka (pre-encoded) {bare_rate:>10,.0f} events/s")
    print(f"bare + serde encode per event      {len(records) / encoding:>10,.0f} events/s")
    print(f"producer SDK (validate+key+encode) {sdk_rate:>10,.0f} events/s")
    print(f"ratio {ratio:.0%} of bare (pre-encoded)  {verdict}")
    print(f"ratio {sdk_rate * encoding / len(records):.0%} of bare + serde encode")


if __name__ == "__main__":
    main()
