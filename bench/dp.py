"""How long a differentially private release of a 1,000-cell histogram over a million landed rows
takes, beside the plain SQL aggregate of the same cells in the same run.

    python -m bench.dp [--rows 1000000] [--population 200000]

Builds the fraud database's welfare claims table with the sinks' own DDL in a fresh chDB directory
and fills it with `--rows` claims of `--population` people (pseudonym-shaped ids, postcodes, one
month), on an embedded broker and registry of its own. The release is the demo charter's
`dp_release` with its query widened to 1,000 cells (the first three postcode digits, 000-999) and
run as `backbone dp release` runs it (`app.dp_release.run_release`): the spend sealed in the audit
trail, each person's contribution bounded in SQL, OpenDP's noise, the cells written to the
recipient's database and published on `dp.statistics.releases`. Goal: under `GOAL_S` seconds.
Results go to `bench/results/dp-<timestamp>.json`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import SecretStr
from rich.table import Table

from app.dp_release import compute, releases_topic, run_release, source_table
from backbone.audit.dp_ledger import LedgerWriter
from backbone.clickhouse.client import make_client
from backbone.events.catalog import load_catalog
from backbone.kafka.topics import Topics
from backbone.keys.keyring import Keyring
from backbone.keys.master import encode_master_key, new_master_key
from backbone.policy.agreements import Agreement, load_agreements, to_yaml
from backbone.privacy.bounding import plain_aggregate
from backbone.settings import PROJECT_ROOT, load_settings
from backbone.stack.embedded import EmbeddedBroker, EmbeddedRegistry
from bench.results import console, save
from consumers import ddl
from consumers.plans import recipient_plan

GOAL_S = 5.0
PREFIX = "bench_"
SOURCE = "welfare-to-fraud"
WINDOW = "2026-03"


@dataclass
class Results:
    rows: int
    population: int
    cells: int = 0
    fill_s: float = 0.0
    plain_sql_s: float = 0.0  # SELECT district, count() ... GROUP BY: no bounding, no noise, nothing sealed
    computed_s: float = 0.0  # bounded SQL + OpenDP noise + accuracy, no ledger, no publishing
    release_s: float = 0.0  # the whole release: ledger record sealed, computed, written and published
    accuracy: float = 0.0


def charter_with_1000_cells(settings):  # noqa: ANN001, ANN201 - Settings -> Charter
    charter = load_agreements(PROJECT_ROOT / "agreements", load_catalog(settings.schemas_dir))
    data = yaml.safe_load(to_yaml(charter.get(SOURCE)))
    query = data["dp_release"]["queries"][0]
    query["group_by"] = [{"column": "postcode", "prefix": 3, "values": {"range": [0, 999]}}]
    return charter.with_agreement(Agreement.model_validate(data), "bench")


def measure(rows: int, population: int, work: Path) -> Results:
    results = Results(rows, population)
    master = new_master_key()
    with EmbeddedBroker(work / "broker") as broker, EmbeddedRegistry(work / "registry", broker.bootstrap) as registry:
        settings = load_settings(kafka_bootstrap=broker.bootstrap, schema_registry_url=registry.url, data_dir=work / "data",
                                 clickhouse_dsn=f"chdb://{work / 'clickhouse'}", clickhouse_database_prefix=PREFIX,
                                 master_key=SecretStr(encode_master_key(master)), keyring_path=work / "operator.keyring",
                                 identity="bench-statistician")
        Keyring.generate().save(settings.keyring_path, master)
        charter = charter_with_1000_cells(settings)
        agreement = charter.current(SOURCE)
        client = make_client(settings.clickhouse_dsn)
        try:
            started = time.perf_counter()
            plan = recipient_plan(settings, charter, "fraud")
            for database in plan.databases:
                client.command(ddl.create_database_sql(database))
            for destination, columns in plan.tables.items():
                client.command(ddl.create_table_sql(destination.database, destination.table, columns, destination.order_by,
                                                    destination.retention_days))
            table = source_table(settings, agreement)
            client.command(
                f"INSERT INTO {table} (event_id, occurred_at, national_id, postcode, period, monthly_amount) SELECT "
                f"generateUUIDv4(), now64(3), concat('k1.', base64Encode(toString(sipHash64(number % {population})))), "
                f"toString(1000 + cityHash64(number % {population}) % 9000), {{w:String}}, 100 + number % 900 FROM numbers({rows})",
                parameters={"w": WINDOW})
            results.fill_s = time.perf_counter() - started
            release, query = agreement.dp_release, agreement.dp_release.queries[0]
            results.cells = query.cell_count()
            sql, parameters = plain_aggregate(table, release, query, WINDOW)
            started = time.perf_counter()
            client.query(sql, parameters=parameters)
            results.plain_sql_s = time.perf_counter() - started
            started = time.perf_counter()
            compute(client, table, release, query, WINDOW)
            results.computed_s = time.perf_counter() - started
            Topics(settings).ensure(releases_topic("statistics"))  # made by the first release; later ones find it
            with LedgerWriter(settings, settings.identity) as writer:  # opened beforehand, as a long-running releaser would
                started = time.perf_counter()
                released = run_release(settings, client, charter, SOURCE, window=WINDOW, writer=writer)
                results.release_s = time.perf_counter() - started
            results.accuracy = released.accuracy or 0.0
        finally:
            client.close()
    return results


def report(results: Results) -> Path:
    table = Table("step", "seconds", title=f"DP release of a {results.cells:,}-cell histogram over {results.rows:,} landed rows "
                                          f"({results.population:,} people)")
    table.add_row("fill (not timed against the goal)", f"{results.fill_s:.2f}")
    table.add_row("plain SQL aggregate (baseline)", f"{results.plain_sql_s:.3f}")
    table.add_row("bounded SQL + OpenDP noise", f"{results.computed_s:.3f}")
    table.add_row("whole release (sealed, computed, written, published)", f"{results.release_s:.3f}")
    console.print(table)
    ratio = results.release_s / results.plain_sql_s if results.plain_sql_s else float("inf")
    console.print(f"release {ratio:.1f}x the plain aggregate; +/- {results.accuracy:.1f} per cell at 95%; goal < {GOAL_S:g} s: "
                  f"{'met' if results.release_s < GOAL_S else 'NOT met'}")
    return save("dp", results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="landed claims (1 M for the issue's figure)")
    parser.add_argument("--population", type=int, default=200_000, help="distinct people among them")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-dp-") as work:
        report(measure(args.rows, args.population, Path(work)))


if __name__ == "__main__":
    main()
