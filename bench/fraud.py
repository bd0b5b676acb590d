"""The fraud sink's time per landing at growing table sizes, in three layouts of the fraud tables:
ordered by event id alone (as made before `consumers.fraud.layout`); ordered by subject with the
rules' keys projected by landing day (the layout before `_landed_seq`: the watermark is a day, so a
run reads the keys of every landing that day); and the plan's, keys projected by landing (a run
reads the keys landed since the previous run): every rule over every row (a full run) and the
incremental runs (the keys landed since, each over its whole history), in chDB.

    python -m bench.fraud [--sizes 1000000,10000000] [--landing 10000] [--landings 3] [--batch 20000]
                          [--settle 300] [--layouts event_id,subject_day,subject] [--merged] [--keep DIR]
                          [--merge-age S]

For each size and layout the fraud database's tables (the sinks' own DDL) are filled with that many
rows in total (claims 50 %, incomes 45 %, deaths 5 %, a subject per 20 rows, 12 periods, a random
bank account per claim), landed over the past two years as a sink lands them: inserts of `--batch`
rows (a sink's batch, `BACKBONE_SINK_BATCH_ROWS`), oldest first, while ClickHouse's background merges
run as they would; then the bench waits for the merges to settle (none running for 2 s, at most
`--settle` s; with `--merge-age S`, also for the merge of each fraud table's parts once all are S
seconds old, `ddl.MERGE_AGE_SETTING`, which the product does after an hour) and records each
table's parts (`--batch 0`: one insert per table, which ClickHouse
splits into equal blocks of about a million rows: parts no merge combines soon; `--merged`: each
table merged into one part, as if every merge had run). Then a landing of `--landing` rows arrives
today and the rules run over every row (before: every landing cost this); then `--landings` more
landings of that size, each followed by an incremental run (after: its median is the time per landing),
taken in turn at every size and layout (so a shared machine's load falls on each alike), and each
rule's SELECT over the last landing alone (time and granules: where a landing's time goes). Alerts are not published (no broker):
the time is the rules' SQL. Every layout must raise the same alerts. Goal: incremental flat in
table size (the ratio largest / smallest size near 1). Results go to `bench/results/fraud-<timestamp>.json`.
`--keep DIR` keeps the filled tables in DIR (a chDB directory) and reuses them in later runs of the same
sizes, layouts and fill, so the minutes a 10 M fill takes are spent once (their landings add to them).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from backbone.clickhouse.client import make_client
from backbone.events.catalog import load_catalog
from backbone.policy.agreements import load_agreements
from backbone.settings import load_settings
from bench.results import LOADED_MACHINE, add_flat_ratios, console, measures, print_and_save, size_ratio
from consumers import ddl
from consumers.fraud import RULES, FraudDetector
from consumers.fraud.detector import INCREMENTAL_READ_SETTINGS
from consumers.fraud.layout import DAY_PROJECTION
from consumers.plans import Destination, recipient_plan

CLAIMS, INCOMES, DEATHS = "welfare_benefit_claimed", "tax_income_declared", "registry_death_registered"


@dataclass
class Point:
    rows: int
    layout: str
    fill_s: float = 0.0
    full_s: float = 0.0
    incremental_s: list[float] = field(default_factory=list)  # one per landing after the first run
    # (granules read, granules of the tables it reads) by each of those runs, as ClickHouse plans it
    incremental_granules: list[tuple[int, int]] = field(default_factory=list)
    alerts: int = 0
    parts: dict[str, int] = field(default_factory=dict)  # table -> active parts when the landings began
    settle_s: float = 0.0  # the wait for the merges after the fill (with --merge-age: the forced merges' rewrite)
    # rule kind -> (seconds, granules read, granules of the tables it reads) of its SELECT over the last
    # landing alone, run again after the timed runs (median of 3): where a landing's time goes
    per_rule: dict[str, tuple[float, int, int]] = field(default_factory=dict)

    @property
    def per_landing_s(self) -> float:
        return sorted(self.incremental_s)[len(self.incremental_s) // 2] if self.incremental_s else 0.0

    @property
    def per_landing_rows(self) -> int:
        """At most the rows an incremental run reads: its granules times the layout's rows per granule."""
        return self.per_landing_granules[0] * (8192 if self.layout == "event_id" else ddl.PROJECTED_INDEX_GRANULARITY)

    @property
    def per_landing_granules(self) -> tuple[int, int]:
        return sorted(self.incremental_granules)[len(self.incremental_granules) // 2] if self.incremental_granules else (0, 0)


@dataclass
class Results:
    landing_rows: int
    merged: bool = False  # the filled tables merged into one part each before the landings (--merged)
    batch_rows: int = 0  # rows per insert of the fill (0: one insert per table)
    merge_age_s: float | None = None  # the fraud tables' parts all older than this merged after the fill (--merge-age)
    points: list[Point] = field(default_factory=list)
    # layout -> incremental time (and rows read) per landing at the largest size / at the smallest (1.0: flat)
    ratios: dict[str, float] = field(default_factory=dict)
    full_ratios: dict[str, float] = field(default_factory=dict)  # the same for a run over every row (before)
    rows_ratios: dict[str, float] = field(default_factory=dict)
    identical_alerts: bool = True  # every layout raised the same (kind, subject, period) at every size
    notes: tuple[str, ...] = (LOADED_MACHINE,)


def _insert(client, database: str, rows: int, offset: int, landed: str, subjects: int = 0) -> None:  # noqa: ANN001
    """`rows` rows over the three tables, numbered from `offset`, landed at `landed` (an SQL expression of
    n), a subject per `n % subjects` (default: a subject per 20 rows landed so far)."""
    subjects = subjects or max(1, (offset + rows) // 20)
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


# ordered by event id alone (as tables were made before the fraud layout); ordered by subject with the
# rules' keys projected by landing day (the layout before `_landed_seq`: each run reads the keys of
# every landing that day); the plan's (keys projected by landing: each run reads what landed since the last)
LAYOUTS = ("event_id", "subject_day", "subject")


def _layout(destination: Destination, layout: str) -> Destination:
    if layout == "event_id":
        return replace(destination, order_by=("event_id",), projections=())
    if layout == "subject_day":
        return replace(destination, projections=tuple(
            ddl.Projection(DAY_PROJECTION, (ddl.LANDED_AT, *p.columns[1:]), (ddl.LANDED_AT,)) if p.name == ddl.LANDED_PROJECTION else p
            for p in destination.projections))
    return destination


def _plan_granules(client, sql: str) -> tuple[int, int]:  # noqa: ANN001
    """(granules read, granules of the tables read) by `sql`, as ClickHouse plans it (`EXPLAIN indexes = 1`)."""
    plan = "\n".join(row[0] for row in client.query("EXPLAIN indexes = 1 " + sql).result_rows)
    counts = [(int(done), int(of)) for done, of in re.findall(r"Granules: (\d+)/(\d+)$", plan, re.M)]
    return sum(done for done, _ in counts), sum(of for _, of in counts)


def _granules(client, detector: FraudDetector) -> tuple[int, int]:  # noqa: ANN001
    """(granules read, granules of the tables read) by the detector's next incremental run of every
    rule, as ClickHouse plans it: its work, which a loaded machine does not change."""
    columns = detector._columns()  # noqa: SLF001
    read = total = 0
    for rule in RULES.values():
        mark = detector._since.get(rule.kind)  # noqa: SLF001
        done, of = _plan_granules(client, rule.select_sql(detector.database, columns, mark[1] if mark else None))
        read, total = read + done, total + of
    return read, total


def _per_rule(client, detector: FraudDetector, since: dict) -> dict[str, tuple[float, int, int]]:  # noqa: ANN001
    """Each rule's SELECT over what landed after `since` (kind -> (fingerprint, Since)): median seconds of 3, granules."""
    columns = detector._columns()  # noqa: SLF001
    found = {}
    for rule in RULES.values():
        sql = rule.select_sql(detector.database, columns, since[rule.kind][1] if rule.kind in since else None)
        times = []
        for _ in range(3):
            started = time.perf_counter()
            client.query(sql, settings=INCREMENTAL_READ_SETTINGS)  # as the detector's incremental runs
            times.append(time.perf_counter() - started)
        found[rule.kind] = (sorted(times)[1], *_plan_granules(client, sql))
    return found


def _fill(client, database: str, size: int, batch: int) -> None:  # noqa: ANN001
    """`size` rows landed over the past two years: in inserts of `batch` rows, oldest first, each
    landed on its day (as a sink lands them); `batch` 0: one insert per table, landing days at random."""
    if batch <= 0:
        _insert(client, database, size, 0, "toStartOfDay(now()) - toIntervalDay(1 + n % 730)")
        return
    batches = max(1, -(-size // batch))
    for number in range(batches):
        rows = min(batch, size - number * batch)
        _insert(client, database, rows, number * batch, f"toStartOfDay(now()) - toIntervalDay({730 - number * 729 // batches})",
                max(1, size // 20))


def _parts(client, database: str) -> dict[str, int]:  # noqa: ANN001
    return dict(client.query("SELECT table, count() FROM system.parts WHERE database = {db:String} AND active GROUP BY table ORDER BY table",
                             parameters={"db": database}).result_rows)


def _settle(client, database: str, timeout_s: float, merge_age_s: float | None = None) -> dict[str, int]:  # noqa: ANN001
    """Wait until no background merge of `database` has run for 2 s (at most `timeout_s`); its tables' parts.
    `merge_age_s`: the fraud tables' parts are merged once all are that old (`ddl.MERGE_AGE_SETTING`,
    an hour in the product, whose fill of two years this bench makes in minutes): also wait for each
    to be one part, then give them the product's age back, so the landings measured stay beside it
    as the last hour's landings do."""
    fraud = [ddl.qualified(database, table) for table in (CLAIMS, INCOMES, DEATHS)]
    if merge_age_s is not None:
        for table in fraud:
            client.command(f"ALTER TABLE {table} MODIFY SETTING {ddl.MERGE_AGE_SETTING} = {int(merge_age_s)}, "
                           "merge_selecting_sleep_ms = 1000, max_merge_selecting_sleep_ms = 5000")
    quiet_since = started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        time.sleep(0.5)
        if client.query("SELECT count() FROM system.merges WHERE database = {db:String}", parameters={"db": database}).result_rows[0][0]:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= 2.0 and (
                merge_age_s is None or all(_parts(client, database).get(t, 1) <= 1 for t in (CLAIMS, INCOMES, DEATHS))):
            break
    if merge_age_s is not None:
        for table in fraud:
            client.command(f"ALTER TABLE {table} MODIFY SETTING {ddl.MERGE_AGE_SETTING} = {ddl.PROJECTED_MERGE_AGE_S}")
            client.command(f"ALTER TABLE {table} RESET SETTING merge_selecting_sleep_ms, max_merge_selecting_sleep_ms")
    return _parts(client, database)


# The table a complete fill leaves in a point's database: a kept database (--keep) without it is filled again.
FILLED = "bench_filled"


def _filled(client, database: str) -> bool:  # noqa: ANN001
    return bool(client.query("SELECT count() FROM system.tables WHERE database = {db:String} AND name = {t:String}",
                             parameters={"db": database, "t": FILLED}).result_rows[0][0])


def _create_and_fill(client, plan, database: str, size: int, layout: str, merged: bool, batch: int) -> float:  # noqa: ANN001
    """The point's database made afresh in `layout` and filled (`_fill`); the seconds the fill took."""
    client.command(f"DROP DATABASE IF EXISTS {database} SYNC")  # a fill cut short
    client.command(ddl.create_database_sql(database))
    for destination, columns in plan.tables.items():
        laid = _layout(destination, layout)
        for statement in ddl.table_sql(database, laid.table, columns, laid.order_by, None, projections=laid.projections):
            client.command(statement)
    started = time.perf_counter()
    _fill(client, database, size, batch)
    if merged:  # as if every merge had run: one part per table
        for destination in plan.tables:
            client.command(f"OPTIMIZE TABLE {ddl.qualified(database, destination.table)} FINAL")
    filled = time.perf_counter() - started
    client.command(f"CREATE TABLE {ddl.qualified(database, FILLED)} (at DateTime DEFAULT now()) ENGINE = Log")
    client.command(f"INSERT INTO {ddl.qualified(database, FILLED)} (at) VALUES (now())")
    return filled


@dataclass
class _Run:
    """A point being measured: its database, its detector, where the detector's last run resumed."""

    point: Point
    database: str
    detector: FraudDetector
    before: dict = field(default_factory=dict)


def _prepare(client, settings, plan, size: int, layout: str, landing: int,  # noqa: ANN001
             merged: bool = False, batch: int = 0, settle_s: float = 300.0, merge_age_s: float | None = None) -> _Run:
    """The point's tables filled and settled, a landing, and the first run over every row (timed: before)."""
    point = Point(size, layout)
    fill = f"{'merged' if merged else f'batch{batch}'}_"
    prefix = f"b{size}_{layout}_{fill}"
    database = ddl.database_name(prefix, settings.fraud_recipient)
    if _filled(client, database):  # kept from an earlier run (--keep): the rules start over on the same rows
        for table in (ddl.ALERTS_TABLE, ddl.PUBLISHED_TABLE, ddl.WATERMARKS_TABLE):
            client.command(f"DROP TABLE IF EXISTS {ddl.qualified(database, table)} SYNC")
    else:
        point.fill_s = _create_and_fill(client, plan, database, size, layout, merged, batch)
    started = time.perf_counter()
    settled = _settle(client, database, settle_s, merge_age_s if layout != "event_id" else None)
    point.settle_s = time.perf_counter() - started
    point.parts = {table: count for table, count in settled.items() if table in {CLAIMS, INCOMES, DEATHS}}
    detector = FraudDetector(settings.model_copy(update={"clickhouse_database_prefix": prefix}), client, leads=lambda: False)
    _insert(client, database, landing, size, "toStartOfDay(now())")
    started = time.perf_counter()
    detector.detect()  # the first run reads every row: what each landing cost before the rules were incremental
    point.full_s = time.perf_counter() - started
    return _Run(point, database, detector)


def _land_and_run(client, run: _Run, number: int, landing: int) -> None:  # noqa: ANN001
    """Landing `number` of `landing` rows, then the detector's incremental run (timed: after)."""
    point = run.point
    _insert(client, run.database, landing, point.rows + number * landing, "toStartOfDay(now())")
    point.incremental_granules.append(_granules(client, run.detector))
    run.before = dict(run.detector._since or {})  # noqa: SLF001 - where this run resumes, for the per-rule figures
    started = time.perf_counter()
    run.detector.detect()
    point.incremental_s.append(time.perf_counter() - started)


def _finish(client, run: _Run, keep: bool = False) -> set:  # noqa: ANN001
    """Each rule over the last landing, the alerts raised (returned), the database dropped (unless `keep`)."""
    point = run.point
    point.per_rule = _per_rule(client, run.detector, run.before) if point.incremental_s else {}
    found = {alert.key for alert in run.detector.alerts()}
    point.alerts = len(found)
    if not keep:
        client.command(f"DROP DATABASE {run.database} SYNC")
    console.print(f"{point.rows:,} rows, ordered by {point.layout}: fill {point.fill_s:.1f} s, merges settled in {point.settle_s:.1f} s, "
                  f"parts {point.parts}, full {point.full_s:.2f} s, "
                  f"incremental {', '.join(f'{s:.2f}' for s in point.incremental_s)} s, "
                  f"granules read {', '.join(f'{a:,}/{b:,}' for a, b in point.incremental_granules)}")
    return found


def measure(sizes: list[int], landing: int, landings: int = 3, merged: bool = False, batch: int = 20_000,
            settle_s: float = 300.0, layouts: tuple[str, ...] = LAYOUTS, keep: str | None = None,
            merge_age_s: float | None = None) -> Results:
    """`keep`: a directory holding the filled tables between runs (filled by the first run that needs them)."""
    results = Results(landing, merged=merged, batch_rows=batch, merge_age_s=merge_age_s)
    if keep:
        keep = str(Path(keep).resolve())
        Path(keep).mkdir(parents=True, exist_ok=True)
    with (contextlib.nullcontext(keep) if keep else tempfile.TemporaryDirectory(prefix="bench-fraud-")) as tmp:
        client = make_client(f"chdb://{tmp}/clickhouse")
        settings = load_settings(clickhouse_dsn=f"chdb://{tmp}/clickhouse", data_dir=tmp)
        charter = load_agreements(settings.agreements_dir, load_catalog(settings.schemas_dir))
        plan = recipient_plan(settings, charter, settings.fraud_recipient)
        runs = [_prepare(client, settings, plan, size, layout, landing, merged, batch, settle_s, merge_age_s)
                for size in sizes for layout in layouts]
        # landing by landing, every size and layout in turn: a shared machine's load falls on each alike,
        # so the ratios compare like with like (one size after the other, they compared two loads)
        for number in range(1, landings + 1):
            for run in runs:
                _land_and_run(client, run, number, landing)
        found: dict[int, list[set]] = {}
        for run in runs:
            found.setdefault(run.point.rows, []).append(_finish(client, run, bool(keep)))
            results.points.append(run.point)
        results.identical_alerts = all(keys == same[0] for same in found.values() for keys in same)
        client.close()
    for layout in layouts:
        points = [point for point in results.points if point.layout == layout]
        if len(points) < 2:
            continue
        for ratios, figure in ((results.ratios, "per_landing_s"), (results.full_ratios, "full_s"), (results.rows_ratios, "per_landing_rows")):
            if (ratio := size_ratio(getattr(points[0], figure), getattr(points[-1], figure))) is not None:
                ratios[layout] = ratio
    return results


def report(results: Results) -> None:
    merged = ", tables merged first" if results.merged else (
        f", filled in inserts of {results.batch_rows:,} rows, background merges settled" if results.batch_rows else ", filled in one insert per table")
    if results.merge_age_s is not None:
        merged += f", parts all older than {results.merge_age_s:g} s merged (the product: {ddl.PROJECTED_MERGE_AGE_S} s)"
    table = measures(f"fraud sink: rules' time per landing of {results.landing_rows:,} rows (median of the landings{merged})")
    for point in results.points:
        when = {"event_id": "before the layout", "subject_day": "before: day watermark"}.get(point.layout, "now: landing watermark")
        table.add_row(f"{point.rows:,} rows, ordered by {point.layout} ({when}): parts of claims / incomes / deaths",
                      " / ".join(str(point.parts.get(t, 0)) for t in (CLAIMS, INCOMES, DEATHS)), "")
        table.add_row(f"{point.rows:,} rows, ordered by {point.layout} ({when}): before, every rule over every row", f"{point.full_s:.2f} s", "")
        table.add_row(f"{point.rows:,} rows, ordered by {point.layout} ({when}): after, incremental", f"{point.per_landing_s:.2f} s", "")
        done, of = point.per_landing_granules
        table.add_row(f"{point.rows:,} rows, ordered by {point.layout} ({when}): rows read per landing (at most)",
                      f"~{point.per_landing_rows:,} ({done:,} of {of:,} granules)", "")
        for kind, (seconds, read, of) in point.per_rule.items():
            table.add_row(f"{point.rows:,} rows, ordered by {point.layout} ({when}): {kind} over the last landing",
                          f"{seconds:.2f} s, {read:,} of {of:,} granules", "")
    for layout, ratio in results.full_ratios.items():
        table.add_row(f"before (every row), ordered by {layout}: largest / smallest size", f"{ratio:.2f}x", "")
    add_flat_ratios(table, results.ratios, lambda layout: f"after (incremental), ordered by {layout}: largest / smallest size")
    add_flat_ratios(table, results.rows_ratios, lambda layout: f"rows read, ordered by {layout}: largest / smallest size")
    table.add_row("same alerts in every layout", "yes" if results.identical_alerts else "NO", "yes")
    print_and_save("fraud", table, results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--landing", type=int, default=10_000)
    parser.add_argument("--landings", type=int, default=3, help="incremental runs timed per size and layout")
    parser.add_argument("--batch", type=int, default=20_000,
                        help="rows per insert of the fill, as a sink lands its batches (0: one insert per table)")
    parser.add_argument("--settle", type=float, default=300.0, help="seconds to wait at most for background merges after the fill")
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help=f"layouts to measure, of {', '.join(LAYOUTS)}")
    parser.add_argument("--merged", action="store_true",
                        help="merge each filled table into one part first (OPTIMIZE FINAL), as if every merge had run")
    parser.add_argument("--keep", metavar="DIR",
                        help="keep the filled tables in DIR's chDB and reuse them in later runs with the same sizes and fill "
                             "(each run's landings add to them; delete DIR to start afresh)")
    parser.add_argument("--merge-age", type=float, metavar="S",
                        help="after the fill, merge the fraud tables' parts all older than S seconds (the product merges "
                             f"them after {ddl.PROJECTED_MERGE_AGE_S} s: this bench lands two years in minutes), wait for "
                             "it within --settle, then land and measure with the product's age")
    args = parser.parse_args()
    layouts = tuple(layout.strip() for layout in args.layouts.split(",") if layout.strip())
    if not layouts or set(layouts) - set(LAYOUTS):
        parser.error(f"--layouts takes some of {', '.join(LAYOUTS)}")
    report(measure([int(size) for size in args.sizes.split(",")], args.landing, args.landings, args.merged,
                   args.batch, args.settle, layouts, args.keep, args.merge_age))


if __name__ == "__main__":
    main()
