"""A design the fraud sink does not use, measured before building it: a per-subject state table (one
`AggregatingMergeTree` row per subject: its claims' (period, benefit), its incomes' (period, event id,
amount), the month of its earliest death; a redelivered copy of an event is the same element, so it
counts once) read for the subjects of a landing, against the rules reading the landed tables, for the
two rules keyed by the subject (`undeclared_income`, `claim_after_death`), in chDB.

    python -m bench.fraud_state --keep DIR [--rounds 5] [--granularity 16,64]

It reads the tables `python -m bench.fraud --keep DIR --layouts subject` filled and left in DIR (every
size there), builds the state from them once per granularity (rows per granule; kept in DIR, merged
into one part: the best case for the state), takes the subjects of the last landing, and times both
readings in turn, round by round and size by size (a shared machine's load falls on each alike):
median seconds, granules read, and whether both find the same (kind, subject, period). Goal of the
design: the state's time flat in table size. Results go to `bench/results/fraud_state-<timestamp>.json`.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from backbone.clickhouse.client import make_client
from bench.results import LOADED_MACHINE, add_flat_ratios, console, measures, print_and_save, size_ratio
from consumers import ddl
from consumers.fraud import RULES
from consumers.fraud.rules.undeclared_income import INCOME_THRESHOLD_EUR, MEANS_TESTED, _literals

CLAIMS, INCOMES, DEATHS = "welfare_benefit_claimed", "tax_income_declared", "registry_death_registered"
KINDS = ("undeclared_income", "claim_after_death")
STATE = "probe_subject_state_g{granularity}"


@dataclass
class Point:
    database: str
    rows: int  # rows in the three landed tables
    subjects: int = 0  # subjects of the last landing
    raw_s: float = 0.0  # the two rules' SELECTs over the landed tables, median of the rounds
    raw_granules: tuple[int, int] = (0, 0)
    state_s: dict[int, float] = field(default_factory=dict)  # granularity -> median seconds
    state_granules: dict[int, tuple[int, int]] = field(default_factory=dict)
    state_rows: int = 0
    same_findings: bool = True


@dataclass
class Results:
    rounds: int
    points: list[Point] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)  # reading -> time at the largest size / the smallest
    notes: tuple[str, ...] = (LOADED_MACHINE,)


def _granules(client, sql: str) -> tuple[int, int]:  # noqa: ANN001
    plan = "\n".join(row[0] for row in client.query("EXPLAIN indexes = 1 " + sql).result_rows)
    counts = [(int(done), int(of)) for done, of in re.findall(r"Granules: (\d+)/(\d+)$", plan, re.M)]
    return sum(done for done, _ in counts), sum(of for _, of in counts)


def _build(client, database: str, granularity: int) -> None:  # noqa: ANN001
    """The state of every subject in `database`, from its landed tables, merged into one part (once)."""
    state = ddl.qualified(database, STATE.format(granularity=granularity))
    if client.query(f"EXISTS TABLE {state}").result_rows[0][0]:
        return
    client.command(f"""CREATE TABLE {state} (subject String,
        claims SimpleAggregateFunction(groupUniqArrayArray, Array(Tuple(String, String))),
        incomes SimpleAggregateFunction(groupUniqArrayArray, Array(Tuple(String, UUID, Float64))),
        died SimpleAggregateFunction(min, Nullable(String)))
        ENGINE = AggregatingMergeTree ORDER BY subject
        SETTINGS index_granularity = {int(granularity)}, {', '.join(ddl.COMPRESS_BLOCK_SETTINGS)}""")
    for table, column, value in ((CLAIMS, "claims", "groupUniqArray((period, toString(benefit_type)))"),
                                 (INCOMES, "incomes", "groupUniqArray((period, event_id, declared_income))"),
                                 (DEATHS, "died", "min(formatDateTime(date_of_death, '%Y-%m'))")):
        client.command(f"INSERT INTO {state} (subject, {column}) SELECT national_id, {value} "
                       f"FROM {ddl.qualified(database, table)} GROUP BY national_id")
    client.command(f"OPTIMIZE TABLE {state} FINAL")


def state_sql(database: str, granularity: int, subjects: str) -> str:
    """Both rules' findings for `subjects` (a subquery) from the state alone."""
    state = ddl.qualified(database, STATE.format(granularity=granularity))
    return f"""
        SELECT found.1 AS kind, subject, found.2 AS period FROM (
          SELECT subject, groupUniqArrayArray(claims) AS c, groupUniqArrayArray(incomes) AS i, min(died) AS d
          FROM {state} WHERE subject IN ({subjects}) GROUP BY subject)
        ARRAY JOIN arrayConcat(
          arrayMap(p -> ('undeclared_income', p),
                   arrayFilter(p -> arraySum(arrayMap(x -> x.3, arrayFilter(x -> x.1 = p, i))) > {INCOME_THRESHOLD_EUR!r},
                               arrayDistinct(arrayMap(x -> x.1, arrayFilter(x -> x.2 IN ({_literals(MEANS_TESTED)}), c))))),
          arrayMap(p -> ('claim_after_death', p), arrayFilter(p -> d IS NOT NULL AND p > d, arrayDistinct(arrayMap(x -> x.1, c))))) AS found"""


def _timed(client, sql: str) -> tuple[float, set]:  # noqa: ANN001
    started = time.perf_counter()
    rows = client.query(sql).result_rows
    return time.perf_counter() - started, {tuple(row[:3]) for row in rows}


def measure(keep: str, rounds: int, granularities: list[int]) -> Results:
    results = Results(rounds)
    client = make_client(f"chdb://{Path(keep).resolve()}/clickhouse")
    databases = [name for (name,) in client.query(
        "SELECT name FROM system.databases WHERE match(name, '^b[0-9]+_subject_') ORDER BY length(name), name").result_rows]
    if not databases:
        raise SystemExit(f"no tables in {keep}: fill them first with `python -m bench.fraud --keep {keep} --layouts subject`")
    work = []
    for database in databases:
        columns: dict[str, dict[str, str]] = {}
        for table, name, kind in client.query("SELECT table, name, type FROM system.columns WHERE database = {db:String}",
                                              parameters={"db": database}).result_rows:
            columns.setdefault(table, {})[name] = kind
        q = lambda table, db=database: ddl.qualified(db, table)  # noqa: E731
        last = client.query(f"SELECT max(_landed_seq) FROM {q(CLAIMS)}").result_rows[0][0]
        subjects = " UNION ALL ".join(f"SELECT national_id FROM {q(table)} WHERE _landed_seq >= {last}" for table in (CLAIMS, INCOMES, DEATHS))
        point = Point(database, int(client.query(f"SELECT (SELECT count() FROM {q(CLAIMS)}) + (SELECT count() FROM {q(INCOMES)}) "
                                                 f"+ (SELECT count() FROM {q(DEATHS)})").result_rows[0][0]))
        point.subjects = int(client.query(f"SELECT uniqExact(national_id) FROM ({subjects})").result_rows[0][0])
        raw = [RULES[kind].sql(database, columns, f"national_id IN ({subjects})") for kind in KINDS]
        for granularity in granularities:
            _build(client, database, granularity)
        point.state_rows = int(client.query(f"SELECT count() FROM {q(STATE.format(granularity=granularities[0]))}").result_rows[0][0])
        grains = [_granules(client, sql) for sql in raw]
        point.raw_granules = (sum(g[0] for g in grains), sum(g[1] for g in grains))
        point.state_granules = {g: _granules(client, state_sql(database, g, subjects)) for g in granularities}
        work.append((point, raw, subjects, {"raw": [], **{g: [] for g in granularities}}))
    for _ in range(rounds):  # round by round, size by size: the load falls on each alike
        for point, raw, subjects, times in work:
            found = set()
            spent = 0.0
            for sql in raw:
                seconds, rows = _timed(client, sql)
                spent, found = spent + seconds, found | rows
            times["raw"].append(spent)
            for granularity in granularities:
                seconds, rows = _timed(client, state_sql(point.database, granularity, subjects))
                times[granularity].append(seconds)
                point.same_findings &= rows == found
    for point, _, _, times in work:
        point.raw_s = statistics.median(times.pop("raw"))
        point.state_s = {g: statistics.median(seconds) for g, seconds in times.items()}
        results.points.append(point)
        console.print(f"{point.rows:,} rows, {point.subjects:,} subjects landed: landed tables {point.raw_s:.3f} s "
                      f"({point.raw_granules[0]:,}/{point.raw_granules[1]:,} granules), state "
                      + ", ".join(f"g{g} {s:.3f} s ({point.state_granules[g][0]:,}/{point.state_granules[g][1]:,})" for g, s in point.state_s.items())
                      + f", same findings: {point.same_findings}")
    if len(results.points) > 1:
        first, last = results.points[0], results.points[-1]
        for name, smallest, largest in (("landed tables", first.raw_s, last.raw_s),
                                        *((f"state, {g}-row granules", first.state_s[g], last.state_s[g]) for g in granularities)):
            if (ratio := size_ratio(smallest, largest)) is not None:
                results.ratios[name] = ratio
    client.close()
    return results


def report(results: Results) -> None:
    table = measures(f"undeclared_income and claim_after_death over a landing's subjects (median of {results.rounds})")
    for point in results.points:
        table.add_row(f"{point.rows:,} rows ({point.subjects:,} subjects landed): landed tables",
                      f"{point.raw_s:.3f} s, {point.raw_granules[0]:,} of {point.raw_granules[1]:,} granules", "")
        for granularity, seconds in point.state_s.items():
            done, of = point.state_granules[granularity]
            table.add_row(f"{point.rows:,} rows: state of {point.state_rows:,} subjects, {granularity}-row granules",
                          f"{seconds:.3f} s, {done:,} of {of:,} granules", "")
        table.add_row(f"{point.rows:,} rows: the same findings", "yes" if point.same_findings else "NO", "yes")
    add_flat_ratios(table, results.ratios, lambda name: f"{name}: largest / smallest size")
    print_and_save("fraud_state", table, results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", required=True, metavar="DIR", help="the directory `bench.fraud --keep` filled")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--granularity", default="16,64", help="rows per granule of the state tables to compare")
    args = parser.parse_args()
    report(measure(args.keep, args.rounds, [int(g) for g in args.granularity.split(",")]))


if __name__ == "__main__":
    main()
