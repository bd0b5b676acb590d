"""A processor worker's state at population scale: RSS and time to first decision with many consent
entries and erasures, and the time to apply one erasure record.

    python -m bench.state [--consent 1000000] [--erasures 100000]

Starts a private embedded broker and registry with a keyring, writes `--consent` consent records
(Avro, wire format, one subject each, produced with librdkafka directly: the SDK's per-record checks
would dominate) and `--erasures` erasure records (each subject's oversight tokens under the
keyring's key), then starts a real `backbone process` worker and measures:
- time to first decision: from the worker's start to its `enforcing` line, which it logs once every
  consent, agreement and erasure record is applied and its data plane runs;
- its RSS then (`VmRSS`, and the peak `VmHWM`);
- erasure apply time per record, in this process, on `processors.erasure.ErasureTable`.
Goal: RSS < 1 GiB and first decision < 60 s with 1 M consent entries and 100 k erasures.
Results go to `bench/results/state-<timestamp>.json`.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import Producer

from app.local import ProcessorWorker, embedded_settings
from backbone.control.erasure import ErasureRecord, oversight_tokens
from backbone.events.catalog import load_catalog
from backbone.events.serde import encoder_for, registry_client
from backbone.kafka.topics import CONSENT_TOPIC, ERASURES_TOPIC, Topics, consent_topic_config
from backbone.keys.keyring import Keyring
from backbone.settings import Settings
from bench.results import LOADED_MACHINE, console, measures, print_notes, save, target
from processors.erasure import ErasureTable

GOAL_RSS_MIB = 1024.0
GOAL_FIRST_DECISION_S = 60.0


@dataclass
class Results:
    consent_entries: int
    erasures: int
    produce_s: float = 0.0
    first_decision_s: float = 0.0
    rss_mib: float = 0.0
    peak_rss_mib: float = 0.0
    erasure_apply_us: float = 0.0
    worker_held: str = ""
    notes: tuple[str, ...] = (LOADED_MACHINE,)


def _status_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def subject(i: int) -> str:
    return str(100_000_000 + i)


def produce_state(settings: Settings, keyring: Keyring, consent: int, erasures: int) -> list[tuple[bytes, bytes]]:
    """Write the consent and erasure records; returns the erasure records (key, value)."""
    topics = Topics(settings)
    topics.ensure(CONSENT_TOPIC, config=consent_topic_config())
    topics.ensure(ERASURES_TOPIC, partitions=1, config={"cleanup.policy": "compact"})
    catalog = load_catalog(settings.schemas_dir)
    encode = encoder_for(registry_client(settings), f"{CONSENT_TOPIC}-value", catalog.events["consent.changed"].avro)
    template = {"event_id": "00000000-0000-4000-8000-000000000000", "event_type": "consent.changed", "provider": "consent",
                "occurred_at": datetime.now(UTC), "at": datetime.now(UTC), "purpose": "scientific_research", "status": "granted", "channel": "web",
                "subject_national_id": "", "governance": {"lawful_basis": "consent", "purposes": ["scientific_research"], "consent_id": None}}
    producer = Producer(settings.producer_config())
    for i in range(consent):
        record = dict(template, subject_national_id=subject(i))
        producer.produce(CONSENT_TOPIC, encode(record), f"k{i}:scientific_research".encode())
        if i % 50_000 == 0:
            producer.flush()
    now = datetime.now(UTC)
    records = []
    for i in range(erasures):
        tokens = oversight_tokens(keyring, subject(consent + i))
        records.append((tokens[0].encode(), ErasureRecord(tokens[0], tuple(tokens), now, "bench", f"a{i}", ()).to_json()))
    for key, value in records:
        producer.produce(ERASURES_TOPIC, value, key)
        producer.poll(0)
    producer.flush()
    return records


def measure(consent: int, erasures: int) -> Results:
    results = Results(consent, erasures)
    with tempfile.TemporaryDirectory(prefix="bench-state-") as tmp, embedded_settings(Path(tmp)) as settings:
        keyring = Keyring.open(settings)
        started = time.perf_counter()
        records = produce_state(settings, keyring, consent, erasures)
        results.produce_s = time.perf_counter() - started
        console.print(f"state written in {results.produce_s:.1f} s; starting a worker")
        worker = ProcessorWorker(settings.model_copy(update={"kafka_timeout_s": 30.0}), "state")
        started = time.perf_counter()
        worker.start(timeout=300)
        results.first_decision_s = time.perf_counter() - started
        results.rss_mib = _status_mib(worker.pid, "VmRSS")  # type: ignore[arg-type]
        results.peak_rss_mib = _status_mib(worker.pid, "VmHWM")  # type: ignore[arg-type]
        found = re.search(r"(\d+) consent records; (\d+) erased subjects", worker.log_path.read_text())
        results.worker_held = found.group(0) if found else "(not logged)"  # the state was read, not assumed
        worker.stop()
        table = ErasureTable(keyring)
        started = time.perf_counter()
        for key, value in records:
            table.apply(key, value)
        results.erasure_apply_us = (time.perf_counter() - started) / max(1, len(records)) * 1e6
    return results


def report(results: Results) -> Path:
    table = measures(f"worker state: {results.consent_entries:,} consent entries, {results.erasures:,} erasures")
    table.add_row("time to first decision", f"{results.first_decision_s:.1f} s",
                  target(results.first_decision_s < GOAL_FIRST_DECISION_S, f"< {GOAL_FIRST_DECISION_S:.0f} s"))
    table.add_row("worker RSS when deciding", f"{results.rss_mib:,.0f} MiB", target(results.rss_mib < GOAL_RSS_MIB, "< 1 GiB"))
    table.add_row("worker peak RSS", f"{results.peak_rss_mib:,.0f} MiB", target(results.peak_rss_mib < GOAL_RSS_MIB, "< 1 GiB"))
    table.add_row("erasure apply per record", f"{results.erasure_apply_us:.1f} µs", "flat in the set's size")
    console.print(table)
    console.print(f"the worker logged: {results.worker_held}")
    print_notes(results.notes)
    return save("state", results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--consent", type=int, default=1_000_000)
    parser.add_argument("--erasures", type=int, default=100_000)
    args = parser.parse_args()
    report(measure(args.consent, args.erasures))


if __name__ == "__main__":
    main()
