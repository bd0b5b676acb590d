"""The fraud sink's recording of a run's findings in `alerts`, at growing numbers of alerts held.

An incremental fraud run records what it found (`consumers.fraud.alerts.record_findings`). Before,
it first asked `alerts` which of its findings' subjects were alerted already (a look-up whose reading
grew with the table: ClickHouse's 8192-row granules, one touched per subject); now `alerts` keeps each
finding's first alert (`ddl.ALERTS_VERSION`) and the findings are inserted as they are. This times
both, for `--found` findings (half of them alerted already), in an `alerts` table holding each of
`--sizes` alerts, in chDB:

    python -m bench.held_alerts [--sizes 100000,1000000,5000000] [--found 5000] [--rounds 5]

Goal: the recording's time flat in the alerts held (the ratio largest / smallest size near 1).
Results go to `bench/results/held_alerts-<timestamp>.json`.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field

from backbone.clickhouse.client import make_client
from bench.results import LOADED_MACHINE, add_flat_ratios, console, measures, print_and_save, size_ratio
from consumers import ddl
from consumers.fraud.alerts import record_findings

KIND = "undeclared_income"
# how `alerts` was made before it kept each finding's first alert
OLD_ALERTS = ("CREATE TABLE {table} (kind LowCardinality(String), subject String, period String, details String, "
              "detected_at DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = ReplacingMergeTree ORDER BY (kind, subject, period)")
LAYOUTS = {"look-up (before)": True, "first alert kept (after)": False}


@dataclass
class Point:
    alerts: int
    layout: str
    record_s: float = 0.0  # median of the rounds


@dataclass
class Results:
    found: int
    rounds: int
    points: list[Point] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)  # layout -> time, largest / smallest size
    notes: list[str] = field(default_factory=lambda: [LOADED_MACHINE])


def _subject(n: int) -> str:
    return f"k1.s{n}"


def _fill(client, database: str, alerts: int, look_up: bool) -> None:  # noqa: ANN001
    table = ddl.qualified(database, ddl.ALERTS_TABLE)
    client.command(OLD_ALERTS.format(table=table) if look_up else ddl.create_alerts_table_sql(database))
    client.command(f"INSERT INTO {table} (kind, subject, period, details) "
                   f"SELECT '{KIND}', concat('k1.s', toString(intDiv(number, 2))), "
                   f"concat('2025-', leftPad(toString(1 + number % 2), 2, '0')), '' FROM numbers({alerts})")
    client.command(f"OPTIMIZE TABLE {table} FINAL")


def _findings(client, database: str, size: int, found: int, seed: int) -> str:  # noqa: ANN001
    """A rule's SELECT of `found` findings: half alerted already, half new (subjects beyond the held),
    read from a small table of their own (so the time is the recording's, not the rule's)."""
    pick = random.Random(seed)
    held = pick.sample(range(size // 2), found // 2)
    rows = [[_subject(n), "2025-01"] for n in held] + [[_subject(size + seed * found + n), "2025-01"] for n in range(found - found // 2)]
    table = ddl.qualified(database, f"found_{seed}")
    client.command(f"CREATE TABLE {table} (subject String, period String) ENGINE = MergeTree ORDER BY subject")
    client.insert(table, rows, column_names=["subject", "period"])
    return f"SELECT '{KIND}' AS kind, subject, period, '' AS details FROM {table}"


def measure(sizes: list[int], found: int, rounds: int) -> Results:
    results = Results(found, rounds)
    with tempfile.TemporaryDirectory(prefix="bench-held-alerts-") as tmp:
        client = make_client(f"chdb://{tmp}/clickhouse")
        for size in sizes:
            for layout, look_up in LAYOUTS.items():
                database = f"held_{'before' if look_up else 'after'}_{size}"
                client.command(ddl.create_database_sql(database))
                _fill(client, database, size, look_up)
                times = []
                for round_ in range(rounds):
                    rule = _findings(client, database, size, found, round_)
                    started = time.perf_counter()
                    record_findings(client, database, KIND, rule, look_up=look_up)
                    times.append(time.perf_counter() - started)
                results.points.append(Point(size, layout, statistics.median(times)))
                console.print(f"{size:>10,} alerts held, {layout}: {statistics.median(times):.3f} s")
                client.command(f"DROP DATABASE {database} SYNC")
    for layout in LAYOUTS:
        mine = [p for p in results.points if p.layout == layout]
        if len(mine) > 1 and (ratio := size_ratio(mine[0].record_s, mine[-1].record_s)) is not None:
            results.ratios[layout] = ratio
    return results


def report(results: Results) -> None:
    table = measures(f"recording {results.found:,} findings of a run in alerts (median of {results.rounds})")
    for point in results.points:
        table.add_row(f"{point.alerts:,} alerts held, {point.layout}", f"{point.record_s:.3f} s", "")
    add_flat_ratios(table, results.ratios, lambda layout: f"{layout}: largest / smallest size")
    print_and_save("held_alerts", table, results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000,5000000")
    parser.add_argument("--found", type=int, default=5_000, help="findings of a run, half of them alerted already")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    report(measure([int(size) for size in args.sizes.split(",")], args.found, args.rounds))


if __name__ == "__main__":
    main()
