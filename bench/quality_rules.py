"""What reference checks and business keys cost in the quality monitor (issue 32): the CPU per event
of `QualityMonitor` over a seeded synthetic stream with the schemas' contracts as they are, and with
their `reference` rules and `business_key`s taken out, in alternating rounds (median).

    python -m bench.quality_rules [--events 30000] [--rounds 5] [--seed 4]

Results go to `bench/results/quality-rules-<timestamp>.json`.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import statistics
import time
from datetime import UTC, datetime

from backbone.events.catalog import load_catalog
from backbone.quality.checks import QualityMonitor
from backbone.quality.contract import QualityContract, QualitySection, load_quality
from backbone.settings import PROJECT_ROOT
from bench.results import console, measures, save
from producers.synthetic import generate


def without_new_rules(contract: QualityContract) -> QualityContract:
    """The contract without its reference rules and business key."""
    quality = contract.quality.model_dump(exclude_none=True)
    quality.pop("references", None)
    if "validity" in quality:
        quality["validity"]["rules"] = [r for r in quality["validity"]["rules"] if "reference" not in r]
    if "uniqueness" in quality:
        quality["uniqueness"].pop("business_key", None)
    return QualityContract(contract.event_type, contract.source, QualitySection.model_validate(quality))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=4)
    args = parser.parse_args()
    catalog = load_catalog(PROJECT_ROOT / "schemas")
    contracts = load_quality(PROJECT_ROOT / "schemas", catalog)
    variants = {"with": list(contracts.values()), "without": [without_new_rules(c) for c in contracts.values()]}
    subjects = {name: schema.subject_field for name, schema in catalog.events.items()}
    key = b"bench-key" * 4

    def token(value: object) -> str:  # the router's oversight pseudonym is an HMAC-SHA256 like this one
        return hmac.new(key, str(value).encode(), hashlib.sha256).hexdigest()[:22]

    events = [(t, r) for t, r in generate(seed=args.seed, population=3_000, events=args.events) if t in contracts]
    tokens = [token(r[subjects[t]]) if subjects.get(t) and r.get(subjects[t]) else None for t, r in events]
    now = datetime.now(UTC)
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, chosen in variants.items():
            monitor = QualityMonitor(chosen)
            monitor.bind(subjects, token)
            started = time.process_time()
            for (event_type, record), subject in zip(events, tokens, strict=True):
                monitor.observe(event_type, record, now, subject)
            monitor.flush()
            cpu[name].append((time.process_time() - started) / len(events) * 1e6)
    results = {"events": len(events), "rounds": args.rounds, "seed": args.seed,
               "cpu_us_per_event": {name: round(statistics.median(v), 2) for name, v in cpu.items()}}
    table = measures("Quality monitor, CPU µs per event (median)")
    for name, value in results["cpu_us_per_event"].items():
        table.add_row(f"{name} reference checks and business keys", f"{value:.2f}", "")
    console.print(table)
    save("quality-rules", results)


if __name__ == "__main__":
    main()
