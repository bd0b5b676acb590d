"""The fraud sink's time per landing at growing table sizes: every rule over every row (a full run,
what each landing cost before the rules became incremental) beside the incremental run (the keys
landed since the previous run, each over its whole history), in chDB.

    python -m bench.fraud [--sizes 1000000,3000000,10000000] [--landing 10000]

For each size the fraud database's tables (the sinks' own DDL) are filled with that many rows in
total (claims 50 %, incomes 45 %, deaths 5 %, a subject per 20 rows, 24 periods), landed over the
past two years; then a landing of `--landing` rows arrives today and the rules run, full and then
incremental (after a first run, another landing of the same size arrives). Alerts are not
published (no broker): the time is the rules' SQL. Goal: incremental flat in table size.
Results go to `bench/results/fraud-<timestamp>.json`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass, field

from backbone.clickhouse.client import make_client
from backbone.events.catalog import load_catalog
from backbone.policy.agreements import load_agreements
from backbone.settings import load_settings
from bench.results import LOADED_MACHINE, console, measures, print_notes, save
from consumers import ddl
from consumers.fraud import FraudDetector
from consumers.plans import recipient_plan

CLAIMS, INCOMES, DEATHS = "welfare_benefit_claimed", "tax_income_declared", "registry_death_registered"


@dataclass
class Point:
    rows: int
    fill_s: float = 0.0
    full_s: float = 0.0
    incremental_s: float = 0.0
    alerts: int = 0


@dataclass
class Results:
    landing_rows: int
    points: list[Point] = field(default_factory=list)
    notes: tuple[str, ...] = (LOADED_MACHINE,)


def _insert(client, database: str, rows: int, offset: int, landed: str) -> None:  # noqa: ANN001
    """`rows` rows over the three tables, numbered from `offset`, landed at `landed` (an SQL expression of n)."""
    subjects = max(1, (offset + rows) // 20)
    subject = f"concat('k1.', toString(cityHash64(n % {subjects})))"
    period = "concat('2025-', leftPad(toString(1 + intDiv(n, 7) % 12), 2, '0'))"
    parts = ((CLAIMS, rows // 2, f"""(event_id, national_id, period, benefit_type, bank_account, monthly_amount, _landed_at)
              SELECT generateUUIDv4(number), {subject}, {period}, ['income_support', 'housing_allowance', 'child_benefit'][1 + n % 3],
                     concat('NL', toString(cityHash64(n) % 1000000)), 400, {landed}"""),
             (INCOMES, rows * 45 // 100, f"""(event_id, national_id, period, declared_income, _landed_at)
              SELECT generateUUIDv4(number), {subject}, {period}, (n % 100) * 40.0, {landed}"""),
             (DEATHS, rows // 20, f"""(event_id, national_id, date_of_death, _landed_at)
              SELECT generateUUIDv4(number), {subject}, toDate32('2024-01-01') + n % 700, {landed}"""))
    for table, count, select in parts:
        client.command(f"INSERT INTO {ddl.qualified(database, table)} {select} FROM (SELECT number, number + {offset} AS n "
                       f"FROM numbers({count}))")


def measure(sizes: list[int], landing: int) -> Results:
    results = Results(landing)
    with tempfile.TemporaryDirectory(prefix="bench-fraud-") as tmp:
        client = make_client(f"chdb://{tmp}/clickhouse")
        settings = load_settings(clickhouse_dsn=f"chdb://{tmp}/clickhouse", data_dir=tmp)
        charter = load_agreements(settings.agreements_dir, load_catalog(settings.schemas_dir))
        plan = recipient_plan(settings, charter, settings.fraud_recipient)
        for size in sizes:
            point = Point(size)
            database = ddl.database_name(f"b{size}_", settings.fraud_recipient)
            client.command(ddl.create_database_sql(database))
            for destination, columns in plan.tables.items():
                for statement in ddl.table_sql(database, destination.table, columns, destination.order_by, None):
                    client.command(statement)
            started = time.perf_counter()
            _insert(client, database, size, 0, "toStartOfDay(now()) - toIntervalDay(1 + n % 730)")
            point.fill_s = time.perf_counter() - started
            detector = FraudDetector(settings.model_copy(update={"clickhouse_database_prefix": f"b{size}_"}), client,
                                     leads=lambda: False)
            _insert(client, database, landing, size, "toStartOfDay(now())")
            started = time.perf_counter()
            detector.detect()  # the first run reads every row: what each landing cost before
            point.full_s = time.perf_counter() - started
            _insert(client, database, landing, size + landing, "toStartOfDay(now())")
            started = time.perf_counter()
            detector.detect()
            point.incremental_s = time.perf_counter() - started
            point.alerts = len(detector.alerts())
            client.command(f"DROP DATABASE {database}")
            console.print(f"{size:,} rows: full {point.full_s:.2f} s, incremental {point.incremental_s:.2f} s")
            results.points.append(point)
        client.close()
    return results


def report(results: Results) -> None:
    table = measures(f"fraud sink: rules' time per landing of {results.landing_rows:,} rows")
    for point in results.points:
        table.add_row(f"{point.rows:,} rows: full run (before)", f"{point.full_s:.2f} s", "")
        table.add_row(f"{point.rows:,} rows: incremental (after)", f"{point.incremental_s:.2f} s", "flat in table size")
    console.print(table)
    print_notes(results.notes)
    save("fraud", results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000000,3000000,10000000")
    parser.add_argument("--landing", type=int, default=10_000)
    args = parser.parse_args()
    report(measure([int(size) for size in args.sizes.split(",")], args.landing))


if __name__ == "__main__":
    main()
