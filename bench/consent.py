"""How fast a consent withdrawal is enforced, beside the data plane's own produce -> decision latency
in the same run.

    python -m bench.consent [--withdrawals 30] [--rate 500] [--seconds-per 1.0]

Starts a private embedded broker and registry with a keyring and a real `backbone process` worker.
A background producer offers `--rate` welfare claims per second (consent-based, for random people)
while, for each of `--withdrawals` people who consented to research, the benchmark:
1. publishes the withdrawal through `ConsentPublisher` and notes when the broker acknowledged it;
2. sends that person's claims every 20 ms until the audit trail shows one denied `consent_withdrawn`
   for research (bounded by `--seconds-per` plus 10 s);
3. records enforcement latency = that decision's `decided_at` - the withdrawal's acknowledgement
   (an upper bound: quantised by the 20 ms between claims).
The baseline is the data plane's produce -> decision latency (`decided_at` - `occurred_at`) of the
background claims in the same run: a withdrawal cannot be enforced faster than events are decided.
Goal: p99 enforcement under 1 s. Results go to `bench/results/consent-<timestamp>.json`.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from confluent_kafka import OFFSET_END, Consumer, TopicPartition
from rich.table import Table

from app.local import ProcessorWorker, embedded_settings
from backbone.audit.batches import Unpacker
from backbone.events.serde import Decoder, registry_client
from backbone.kafka.topics import AUDIT_TOPIC
from backbone.settings import Settings
from bench.results import console, percentiles, rank_above, save
from producers import AgencyProducer, ConsentPublisher

GOAL_P99_MS = 1000.0
CLAIM_EVERY_S = 0.02


def claim(subject: str) -> dict:
    return {
        "governance": {"lawful_basis": "consent", "purposes": ["scientific_research", "fraud_prevention_and_detection"],
                       "consent_id": "bench"},
        "national_id": subject, "name": "Bench Person", "date_of_birth": date(1980, 1, 1), "postcode": "1011 KK",
        "benefit_type": "housing_allowance", "period": "2026-03", "monthly_amount": 400.0,
        "bank_account": "NL02RABO0300065264", "household_size": 1, "declared_other_income": 0.0,
    }


def person() -> str:
    return str(900_000_000 + random.randrange(99_999_999))


class AuditTail:
    """Research decisions as they reach `audit.decisions`: source event id -> (outcome, decided_at ms)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.decisions: dict[str, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(30)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        consumer = Consumer(self.settings.consumer_config(f"bench-audit-{uuid.uuid4().hex[:8]}"))
        partitions = consumer.list_topics(AUDIT_TOPIC, timeout=10).topics[AUDIT_TOPIC].partitions
        consumer.assign([TopicPartition(AUDIT_TOPIC, p, OFFSET_END) for p in partitions])
        unpack = Unpacker(Decoder(registry_client(self.settings)).source.schema)
        self._ready.set()
        try:
            while not self._stop.is_set():
                for message in consumer.consume(1000, 0.05):
                    if message.error() is not None:
                        continue
                    for record in unpack.records(message.value() or b""):  # one or many per message (`backbone.audit.batches`)
                        for entry in record["decisions"]:
                            if entry["recipient"] == "research":
                                self.decisions[str(record["event_id"])] = (entry["outcome"], record["decided_at"].timestamp() * 1000)
        finally:
            consumer.close()


@dataclass
class Results:
    withdrawals: int
    offered_events_per_s: float
    enforced: int = 0
    enforcement_ms: dict[str, float] = field(default_factory=dict)
    produce_to_decision_ms: dict[str, float] = field(default_factory=dict)
    goal_p99_ms: float = GOAL_P99_MS


def summary(values: list[float]) -> dict[str, float]:
    """p50, p99 and max in ms to a tenth, and the count."""
    return percentiles(values, (50, 99), rank=rank_above, digits=1, count=True)


def background(settings: Settings, rate: float, stop: threading.Event, sent: dict[str, float]) -> None:
    """Offer `rate` claims per second for random people until `stop` (their send times in `sent`)."""
    with AgencyProducer("welfare", settings) as producer:
        started, count = time.monotonic(), 0
        while not stop.is_set():
            record = claim(person())
            record["occurred_at"] = int(time.time() * 1000)
            sent[producer.send("welfare.benefit_claimed", record)] = record["occurred_at"]
            count += 1
            ahead = count / rate - (time.monotonic() - started)
            if ahead > 0:
                stop.wait(ahead)


def measure(settings: Settings, withdrawals: int, rate: float, seconds_per: float) -> Results:
    results = Results(withdrawals, rate)
    tail = AuditTail(settings)
    tail.start()
    people = [person() for _ in range(withdrawals)]
    with ConsentPublisher(settings) as consent:
        for subject in people:
            consent.grant(subject, "scientific_research")
    time.sleep(2.0)  # every grant is in the worker's table before the load starts
    stop, sent = threading.Event(), {}
    load = threading.Thread(target=background, args=(settings, rate, stop, sent), daemon=True)
    load.start()
    latencies: list[float] = []
    try:
        with ConsentPublisher(settings) as consent, AgencyProducer("welfare", settings) as producer:
            for subject in people:
                acknowledged: list[float] = []
                consent.withdraw(subject, "scientific_research")
                consent.flush()
                acknowledged.append(time.time() * 1000)
                ids: list[str] = []
                deadline = time.monotonic() + seconds_per + 10
                enforced_at = None
                while enforced_at is None and time.monotonic() < deadline:
                    ids.append(producer.send("welfare.benefit_claimed", claim(subject)))
                    producer.flush()
                    time.sleep(CLAIM_EVERY_S)
                    for event_id in ids:
                        outcome = tail.decisions.get(event_id)
                        if outcome and outcome[0] == "consent_withdrawn":
                            enforced_at = outcome[1]
                            break
                if enforced_at is not None:
                    latencies.append(max(0.0, enforced_at - acknowledged[0]))
                time.sleep(max(0.0, seconds_per - CLAIM_EVERY_S * len(ids)))
    finally:
        stop.set()
        load.join(30)
        time.sleep(2.0)
        tail.stop()
    results.enforced = len(latencies)
    results.enforcement_ms = summary(latencies)
    results.produce_to_decision_ms = summary([tail.decisions[e][1] - t for e, t in sent.items() if e in tail.decisions])
    return results


def report(results: Results) -> Path:
    table = Table("measure", "p50 ms", "p99 ms", "max ms", "n")
    for name, figures in (("withdrawal ack -> enforced", results.enforcement_ms), ("produce -> decision (baseline)", results.produce_to_decision_ms)):
        table.add_row(name, *(str(figures.get(k, "-")) for k in ("p50", "p99", "max", "n")))
    console.print(table)
    p99 = results.enforcement_ms.get("p99")
    base = results.produce_to_decision_ms.get("p99")
    if p99 is not None and base:
        console.print(f"enforcement p99 / decision p99: {p99 / base:.2f}; goal p99 < {GOAL_P99_MS:.0f} ms: "
                      f"{'met' if p99 < GOAL_P99_MS else 'NOT met'} ({results.enforced} of {results.withdrawals} enforced)")
    return save("consent", results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--withdrawals", type=int, default=30)
    parser.add_argument("--rate", type=float, default=500.0, help="background claims per second")
    parser.add_argument("--seconds-per", type=float, default=1.0, help="time per withdrawal")
    parser.add_argument("--partitions", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-consent-") as work, embedded_settings(Path(work), args.partitions) as settings:
        worker = ProcessorWorker(settings, "logs/processor").start()
        try:
            report(measure(settings, args.withdrawals, args.rate, args.seconds_per))
        finally:
            worker.stop()


if __name__ == "__main__":
    main()
