"""How long erasing one person takes in recipient databases of a million rows and more, on chDB,
beside a bare ClickHouse scan and a bare lightweight DELETE of one person in the same run.

    python -m bench.erase [--rows 1000000] [--population 100000] [--per-person 24]

Builds the demo charter's recipient tables (the sinks' own DDL) in a fresh chDB directory, fills the
fraud database with `--rows` rows about `--population` people (pseudonym-shaped values) split over
its two event tables, adds `--per-person` rows of one real person (their real tokens under the
keyring, in fraud, research and welfare, and a fraud alert), then times what `backbone erase` runs
against ClickHouse: `row_targets` (tokens under every key id) and `delete_rows` (count, lightweight
DELETE, APPLY DELETED MASK per touched table). The Kafka steps of an erasure (one erasure record,
consent tombstones, DLQ key tombstones) are a few acknowledged produce calls and are not measured
here. Goal: under `GOAL_S` seconds for one person. Results go to `bench/results/erase-<timestamp>.json`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table

from backbone.clickhouse.client import make_client
from backbone.control.erasure import delete_rows, row_targets
from backbone.events.catalog import load_catalog
from backbone.keys import pseudonym
from backbone.keys.keyring import Keyring
from backbone.policy.agreements import load_agreements
from backbone.settings import PROJECT_ROOT, load_settings
from bench.results import console, save
from consumers import ddl
from consumers.plans import recipient_plan

GOAL_S = 5.0
PREFIX = "bench_"


@dataclass
class Results:
    rows: int
    population: int
    per_person: int
    rows_in_databases: int = 0
    fill_s: float = 0.0
    bare_scan_s: float = 0.0  # SELECT count() WHERE national_id IN (token) on the biggest table
    bare_delete_s: float = 0.0  # one lightweight DELETE of another person in the biggest table
    plan_s: float = 0.0  # row_targets: tokens under every key id, from the charter
    erase_s: float = 0.0  # delete_rows: every table, purge included
    removed: dict[str, int] = field(default_factory=dict)
    left_about_person: int = -1


def fill(client, settings, charter, keyring, rows: int, population: int, per_person: int, person: str) -> int:  # noqa: ANN001
    """Create the recipients' tables and fill them; returns rows in the databases."""
    for recipient in sorted({a.recipient for a in charter.agreements}):
        plan = recipient_plan(settings, charter, recipient)
        for database in plan.databases:
            client.command(ddl.create_database_sql(database))
        for destination, columns in plan.tables.items():
            client.command(ddl.create_table_sql(destination.database, destination.table, columns, destination.order_by,
                                                destination.retention_days))
    client.command(ddl.create_alerts_table_sql(f"{PREFIX}fraud"))
    fraud, research, welfare = (f"{PREFIX}{name}" for name in ("fraud", "research", "welfare"))
    half = rows // 2
    for table, count in (("tax_income_declared", half), ("welfare_benefit_claimed", rows - half)):
        client.command(
            f"INSERT INTO {fraud}.{table} (event_id, occurred_at, national_id) SELECT generateUUIDv4(), "
            f"now64(3) - toIntervalSecond(number), concat('k2.', base64Encode(toString(sipHash64(number % {population})))) "
            f"FROM numbers({count})")
    tokens = {domain: pseudonym.token(domain, person, keyring=keyring) for domain in ("fraud", "research")}
    for database, table, value in ((fraud, "tax_income_declared", tokens["fraud"]), (fraud, "welfare_benefit_claimed", tokens["fraud"]),
                                   (research, "welfare_benefit_claimed", tokens["research"]),
                                   (welfare, "registry_address_changed", person)):
        client.command(f"INSERT INTO {database}.{table} (event_id, occurred_at, national_id) SELECT generateUUIDv4(), "
                       f"now64(3) - toIntervalDay(number), {{v:String}} FROM numbers({per_person})", parameters={"v": value})
    client.command(f"INSERT INTO {fraud}.alerts (kind, subject, period, details) VALUES ('bench', {{v:String}}, '2026-03', '{{}}')",
                   parameters={"v": tokens["fraud"]})
    return int(client.query("SELECT sum(total_rows) FROM system.tables WHERE startsWith(database, {p:String})",
                            parameters={"p": PREFIX}).result_rows[0][0])


def measure(rows: int, population: int, per_person: int, work: Path) -> Results:
    results = Results(rows, population, per_person)
    settings = load_settings(data_dir=work, clickhouse_database_prefix=PREFIX)
    charter = load_agreements(PROJECT_ROOT / "agreements", load_catalog(PROJECT_ROOT / "schemas"))
    keyring = Keyring.for_charter(charter)
    keyring.rotate("domain", "fraud")  # a person's rows may carry tokens of two keys: both are looked for
    client = make_client(f"chdb://{work / 'clickhouse'}")
    person = "123456782"
    try:
        started = time.perf_counter()
        results.rows_in_databases = fill(client, settings, charter, keyring, rows, population, per_person, person)
        results.fill_s = time.perf_counter() - started
        biggest = f"{PREFIX}fraud.welfare_benefit_claimed"
        other = client.query(f"SELECT national_id FROM {biggest} WHERE startsWith(national_id, 'k2.') LIMIT 1").result_rows[0][0]
        started = time.perf_counter()
        client.query(f"SELECT count() FROM {biggest} WHERE national_id IN {{v:Array(String)}}", parameters={"v": [other]})
        results.bare_scan_s = time.perf_counter() - started
        started = time.perf_counter()
        client.command(f"DELETE FROM {biggest} WHERE national_id IN {{v:Array(String)}}", parameters={"v": [other]})
        results.bare_delete_s = time.perf_counter() - started
        started = time.perf_counter()
        targets = row_targets(charter, keyring, person, PREFIX)
        results.plan_s = time.perf_counter() - started
        started = time.perf_counter()
        results.removed = delete_rows(client, targets)
        results.erase_s = time.perf_counter() - started
        results.left_about_person = sum(
            int(client.query(f"SELECT count() FROM `{t.database}`.`{t.table}` WHERE `{t.column}` IN {{v:Array(String)}}",
                             parameters={"v": list(t.values)}).result_rows[0][0])
            for t in targets if client.query("SELECT count() FROM system.tables WHERE database = {d:String} AND name = {t:String}",
                                             parameters={"d": t.database, "t": t.table}).result_rows[0][0])
    finally:
        client.close()
    return results


def report(results: Results) -> Path:
    table = Table("measure", "seconds")
    for name, value in (("fill (not part of an erasure)", results.fill_s), ("bare scan of one person, biggest table", results.bare_scan_s),
                        ("bare lightweight DELETE of one person, biggest table", results.bare_delete_s),
                        ("erase: plan (tokens under every key)", results.plan_s),
                        ("erase: delete + purge, every table", results.erase_s)):
        table.add_row(name, f"{value:.3f}")
    console.print(table)
    console.print(f"{results.rows_in_databases:,} rows in the databases; removed {sum(results.removed.values()):,} "
                  f"({', '.join(f'{d}: {n}' for d, n in sorted(results.removed.items()))}); left about the person: "
                  f"{results.left_about_person}; goal erase < {GOAL_S:g} s: {'met' if results.erase_s < GOAL_S else 'NOT met'}")
    return save("erase", results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the fraud database (at least 1 M for the issue's figure)")
    parser.add_argument("--population", type=int, default=100_000, help="distinct people among them")
    parser.add_argument("--per-person", type=int, default=24, help="rows of the erased person per table")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-erase-") as work:
        report(measure(args.rows, args.population, args.per_person, Path(work)))


if __name__ == "__main__":
    main()
