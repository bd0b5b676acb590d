"""Policy decisions + transforms per second on one core, beside fastavro decode + encode of the
same events, for a mix of the demo's events under the demo charter.

    python -m bench.policy [--events 20000] [--rounds 3]

Prints both rates and policy_time / avro_time (target <= 1.0: deciding must not cost more than
the Avro work the processor does anyway). Best of `--rounds` runs; bounded by count.
"""

from __future__ import annotations

import argparse
import io
import random
import time
from collections import Counter
from datetime import UTC, datetime

from fastavro import schemaless_reader, schemaless_writer

from backbone.events.catalog import load_catalog
from backbone.keys.keyring import Keyring
from backbone.policy import DictConsent, PolicyEngine, load_agreements
from backbone.settings import PROJECT_ROOT
from producers.synthetic.samples import sample_event

# share of each event type in the mix (roughly the synthetic agencies' volumes)
MIX = {
    "tax.income_declared": 4,
    "welfare.benefit_claimed": 3,
    "registry.address_changed": 1,
    "registry.death_registered": 1,
    "police.incident_reported": 1,
}


def build_events(count: int, seed: int) -> tuple[list[dict], list[bytes], list[object], DictConsent]:
    """Events, their Avro encodings, their parsed schemas and a consent state (half consented)."""
    catalog = load_catalog(PROJECT_ROOT / "schemas")
    rng = random.Random(seed)
    types = [t for t, weight in MIX.items() for _ in range(weight)]
    consent = DictConsent()
    consented_at = datetime(2025, 1, 1, tzinfo=UTC)
    events, encoded, schemas = [], [], []
    for _ in range(count):
        schema = catalog.events[rng.choice(types)]
        event = sample_event(schema, rng)
        if schema.event_type == "welfare.benefit_claimed" and rng.random() < 0.5:
            event["governance"]["purposes"].append("scientific_research")
            event["governance"]["consent_id"] = "c"
            consent.set(event["national_id"], "scientific_research", "granted", consented_at)
        buffer = io.BytesIO()
        schemaless_writer(buffer, schema.parsed, event)
        events.append(schemaless_reader(io.BytesIO(buffer.getvalue()), schema.parsed))  # exactly as decoded
        encoded.append(buffer.getvalue())
        schemas.append(schema.parsed)
    return events, encoded, schemas, consent


def time_avro(encoded: list[bytes], schemas: list[object]) -> float:
    reader, writer = schemaless_reader, schemaless_writer
    started = time.perf_counter()
    for data, schema in zip(encoded, schemas):
        record = reader(io.BytesIO(data), schema)
        writer(io.BytesIO(), schema, record)
    return time.perf_counter() - started


def time_policy(engine: PolicyEngine, events: list[dict], consent: DictConsent, now: datetime) -> tuple[float, int, Counter]:
    decide = engine.decide
    started = time.perf_counter()
    decided = [decide(event, consent, now) for event in events]
    elapsed = time.perf_counter() - started
    outcomes: Counter = Counter(d.reason or "permit" for decisions in decided for d in decisions)
    return elapsed, sum(outcomes.values()), outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    events, encoded, schemas, consent = build_events(args.events, args.seed)
    charter = load_agreements(PROJECT_ROOT / "agreements", load_catalog(PROJECT_ROOT / "schemas"))
    engine = PolicyEngine(charter, Keyring.for_charter(charter))
    now = datetime(2026, 3, 1, tzinfo=UTC)

    avro_time = min(time_avro(encoded, schemas) for _ in range(args.rounds))
    runs = [time_policy(engine, events, consent, now) for _ in range(args.rounds)]
    policy_time, decisions, outcomes = min(runs, key=lambda run: run[0])

    count = len(events)
    print(f"events: {count} ({', '.join(f'{t} x{w}' for t, w in MIX.items())}), best of {args.rounds}")
    print(f"avro decode+encode : {count / avro_time:>10,.0f} events/s  ({avro_time * 1e6 / count:.2f} us/event)")
    print(f"policy decide+transform: {count / policy_time:>6,.0f} events/s  ({policy_time * 1e6 / count:.2f} us/event, "
          f"{decisions / policy_time:,.0f} decisions/s, {decisions / count:.2f} decisions/event)")
    print(f"outcomes: {dict(sorted(outcomes.items()))}")
    print(f"ratio policy_time/avro_time = {policy_time / avro_time:.2f} (target <= 1.0)")


if __name__ == "__main__":
    main()
