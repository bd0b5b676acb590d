"""Fraud precision and recall with the quality gate on and off, under planted defects (issue 32):
the same seeded stream through the processor's router and the fraud rules twice, in chDB
(`app.quality_gating`). Figures of counts, not of time: the machine's load does not change them.

    python -m bench.quality_gating [--events 12000] [--hours 4] [--burst-hour 1] [--seed 7]

Results go to `bench/results/quality-gating-<timestamp>.json`.
"""

from __future__ import annotations

import argparse
import tempfile

from app.quality_gating import BARS, BURST, run
from backbone.clickhouse.client import make_client
from backbone.events.catalog import load_catalog
from backbone.policy.agreements import load_agreements
from backbone.settings import load_settings
from bench.results import console, measures, save


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=12_000)
    parser.add_argument("--hours", type=int, default=4)
    parser.add_argument("--burst-hour", type=int, default=1, help="the hour (from 0) with 30%% invalid incomes")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    results = {"events": args.events, "hours": args.hours, "burst_hour": args.burst_hour, "seed": args.seed,
               "bars": BARS, "burst_invalid": BURST.invalid, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="bench-gating-") as tmp:
        client = make_client(f"chdb://{tmp}/clickhouse")
        settings = load_settings(clickhouse_dsn=f"chdb://{tmp}/clickhouse", data_dir=tmp)
        charter = load_agreements(settings.agreements_dir, load_catalog(settings.schemas_dir))
        table = measures(f"fraud alerts vs ground truth under planted defects ({args.events:,} events, {args.hours} hours, "
                         f"a burst of {BURST.invalid:.0%} invalid incomes in hour {args.burst_hour})")
        for gated in (False, True):
            found = run(client, settings, charter, gated, seed=args.seed, events=args.events, hours=args.hours,
                        burst_hour=args.burst_hour)
            name = "gate on (" + ", ".join(f"{d} {b}" for d, b in BARS.items()) + ", hold)" if gated else "gate off"
            table.add_row(f"{name}: precision / recall", f"{found.precision:.3f} / {found.recall:.3f}", "")
            table.add_row(f"{name}: alerts, records held, breach events", f"{found.alerts}, {found.held:,}, {found.breaches}", "")
            for s in found.scores:
                table.add_row(f"{name}: {s.kind}", f"{s.true_positives} found, {s.false_positives} false, {s.false_negatives} missed", "")
            results["runs"]["on" if gated else "off"] = {
                "precision": found.precision, "recall": found.recall, "alerts": found.alerts, "held": found.held,
                "breaches": found.breaches, "shared": dict(found.shared),
                "kinds": {s.kind: [s.true_positives, s.false_positives, s.false_negatives] for s in found.scores}}
        client.close()
    console.print(table)
    save("quality-gating", results)


if __name__ == "__main__":
    main()
