"""The fraud sink keeps up as its tables grow: the fraud tables are ordered by subject with the rules'
projections, so an incremental run reads the granules of what landed, not the table; tables made
before are migrated (atomic swap, idempotent); the rules' watermarks live in the fraud database, so a
restarted sink resumes where the last one stopped and still raises what a full run raises;
`alerts.fraud` keeps alerts for a configured time."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from backbone.events.catalog import load_catalog
from backbone.kafka.topics import alerts_topic_config
from backbone.policy.agreements import load_agreements
from backbone.settings import PROJECT_ROOT, Settings, load_settings
from consumers import ddl
from consumers.fraud import RULES, FraudDetector, layout, watermarks
from consumers.fraud.registry import Since
from consumers.plans import SinkPlan, recipient_plan
from consumers.typemap import quote_identifier

CLAIMS, INCOMES, DEATHS = "welfare_benefit_claimed", "tax_income_declared", "registry_death_registered"


def NO_BROKER() -> bool:  # noqa: N802 - the detector's `leads`: another replica publishes (no broker here)
    return False


@dataclass
class Fraud:
    settings: Settings
    plan: SinkPlan
    database: str


def _plan(settings: Settings, recipient: str | None = None) -> SinkPlan:
    charter = load_agreements(PROJECT_ROOT / "agreements", load_catalog(PROJECT_ROOT / "schemas"))
    return recipient_plan(settings, charter, recipient or settings.fraud_recipient)


def _create(client, plan: SinkPlan, old: bool = False) -> None:  # noqa: ANN001
    """The plan's tables as the sink makes them (`old`: ordered by event id alone, as made before the layout)."""
    client.command(ddl.create_database_sql(plan.databases[0]))
    for destination, columns in plan.tables.items():
        laid = replace(destination, order_by=("event_id",), projections=()) if old else destination
        for statement in ddl.table_sql(laid.database, laid.table, columns, laid.order_by, laid.retention_days,
                                       None, laid.shard_by, laid.projections):
            client.command(statement)


def _land(client, database: str, rows: int, offset: int, days_ago: int, subjects: int) -> None:  # noqa: ANN001
    """`rows` rows over the three tables (claims 1/2, incomes 9/20, deaths 1/20) numbered from `offset`,
    landed `days_ago`, a subject per `n % subjects`: enough planted findings of every kind."""
    landed = f"toStartOfDay(now()) - toIntervalDay({days_ago})"
    subject = f"concat('k1.', toString(cityHash64(n % {subjects})))"
    period = "concat('2025-', leftPad(toString(1 + intDiv(n, 7) % 12), 2, '0'))"
    parts = ((CLAIMS, rows // 2, f"""(event_id, occurred_at, national_id, period, benefit_type, bank_account, monthly_amount, _landed_at)
              SELECT generateUUIDv4(number), now64(3), {subject}, {period},
                     ['income_support', 'housing_allowance', 'child_benefit'][1 + n % 3], concat('NL', toString(n % 997)), 400, {landed}"""),
             (INCOMES, rows * 9 // 20, f"""(event_id, occurred_at, national_id, period, declared_income, _landed_at)
              SELECT generateUUIDv4(number), now64(3), {subject}, {period}, (n % 100) * 40.0, {landed}"""),
             (DEATHS, rows // 20, f"""(event_id, occurred_at, national_id, date_of_death, _landed_at)
              SELECT generateUUIDv4(number), now64(3), {subject}, toDate32('2024-06-01') + n % 400, {landed}"""))
    for table, count, select in parts:
        client.command(f"INSERT INTO {ddl.qualified(database, table)} {select} "
                       f"FROM (SELECT number, number + {offset} AS n FROM numbers({count}))")


def _full(client, detector: FraudDetector) -> set[tuple[str, str, str]]:  # noqa: ANN001
    """What every rule over every row finds."""
    columns = detector._columns()  # noqa: SLF001
    found: set[tuple[str, str, str]] = set()
    for rule in RULES.values():
        found |= {tuple(row) for row in client.query(
            f"SELECT DISTINCT kind, subject, period FROM ({rule.select_sql(detector.database, columns)}) "
            "WHERE subject IS NOT NULL").result_rows}
    return found


@pytest.fixture
def fraud(clickhouse_client, clickhouse_dsn: str, tmp_path: Path, unique: str) -> Iterator[Fraud]:  # noqa: ANN001
    settings = load_settings(clickhouse_dsn=clickhouse_dsn, data_dir=tmp_path / "data", clickhouse_database_prefix=f"t{unique}_")
    plan = _plan(settings)
    yield Fraud(settings, plan, plan.databases[0])
    clickhouse_client.command(f"DROP DATABASE IF EXISTS {quote_identifier(plan.databases[0])} SYNC")


def test_fraud_tables_are_ordered_by_subject_and_project_the_rules_keys_by_landing(tmp_path: Path) -> None:
    settings = load_settings(clickhouse_dsn="chdb:///unused", data_dir=tmp_path)
    tables = {destination.table: destination for destination in _plan(settings).tables}
    claims = tables[CLAIMS]
    assert claims.order_by == ("national_id", "event_id") and claims.shard_by == ("national_id",)
    assert {p.name: (p.order_by, set(p.columns)) for p in claims.projections} == {
        ddl.LANDED_PROJECTION: (("_landed_seq",), {"_landed_seq", "national_id", "period", "bank_account"}),
        "key_bank_account_period": (("bank_account", "period"), {"bank_account", "period", "national_id"}),
    }
    assert [p.name for p in tables[DEATHS].projections] == [ddl.LANDED_PROJECTION]
    # another recipient's tables keep the event id order, with no projection
    for destination in _plan(settings, "research").tables:
        assert destination.order_by == ("event_id",) and destination.projections == ()


def test_an_incremental_run_reads_the_granules_of_the_landed_subjects_not_the_table(clickhouse_client, fraud: Fraud) -> None:  # noqa: ANN001
    _create(clickhouse_client, fraud.plan)
    # compressed blocks about a granule each: reading one touched subject's granule decompresses that granule
    engine = clickhouse_client.query("SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = {t:String}",
                                     parameters={"db": fraud.database, "t": CLAIMS}).result_rows[0][0]
    assert "index_granularity = 64" in engine and "min_compress_block_size = 2048" in engine and "max_compress_block_size = 8192" in engine
    _land(clickhouse_client, fraud.database, 120_000, 0, 3, subjects=6_000)
    _land(clickhouse_client, fraud.database, 20_000, 120_000, 0, subjects=6_000)  # today, before the last run
    start = watermarks.resume_point(clickhouse_client)  # where a run starting now resumes next time
    assert start.landed_seq is not None
    # (`resume_point` allows the clock a few milliseconds: say the last run started after the deaths landed)
    landed = clickhouse_client.query(f"SELECT max(_landed_seq) FROM {ddl.qualified(fraud.database, DEATHS)}").result_rows[0][0]
    since = Since(start.day, max(start.landed_seq, landed + 1))
    _land(clickhouse_client, fraud.database, 40, 140_000, 0, subjects=6_000)  # since: a few subjects, accounts and periods
    detector = FraudDetector(fraud.settings, clickhouse_client, leads=NO_BROKER)
    columns = detector._columns()  # noqa: SLF001
    for rule in RULES.values():
        plan = "\n".join(row[0] for row in clickhouse_client.query(
            "EXPLAIN indexes = 1 " + rule.select_sql(fraud.database, columns, since)).result_rows)
        read = [(int(a), int(b)) for a, b in re.findall(r"Granules: (\d+)/(\d+)$", plan, re.M)]
        assert read, plan
        granules, total = sum(a for a, _ in read), sum(b for _, b in read)
        assert granules * 5 <= total, f"{rule.kind} reads {granules} of {total} granules"
        # the keys that landed since the last run are found reading what landed since (the projection
        # ordered by landing), not what landed earlier that day
        keys = rule.touched(fraud.database, since, columns).split(" IN (", 1)[1][:-1]
        assert "_landed_seq >= " in keys and int(clickhouse_client.query(keys).summary["read_rows"]) < 1_000, rule.kind


def test_shared_bank_account_reads_the_claims_once_and_raises_what_the_join_of_claimants_and_counts_raised(
        clickhouse_client, fraud: Fraud) -> None:  # noqa: ANN001
    # Each read of the touched accounts costs a primary-key analysis of the whole key set, most of an
    # incremental run on a large table: the rule reads the claims once (it read them twice, the
    # claimants and their count, and joined the two).
    _create(clickhouse_client, fraud.plan)
    _land(clickhouse_client, fraud.database, 6_000, 0, 1, subjects=400)
    claims = ddl.qualified(fraud.database, CLAIMS)
    clickhouse_client.command(f"INSERT INTO {claims} (event_id, occurred_at, national_id, period, benefit_type, bank_account, monthly_amount) "
                              "SELECT generateUUIDv4(number), now64(3), concat('k9.', toString(number)), '2025-01', 'child_benefit', "
                              "'NL-shared-x', 400 FROM numbers(3)")
    detector = FraudDetector(fraud.settings, clickhouse_client, leads=NO_BROKER)
    columns = detector._columns()  # noqa: SLF001
    rule = RULES["shared_bank_account"]
    joined = f"""SELECT w.national_id AS subject, w.period AS period, w.bank_account AS account, a.claimants AS claimants
        FROM (SELECT national_id, period, bank_account FROM {claims} GROUP BY national_id, period, bank_account) AS w
        INNER JOIN (SELECT bank_account, period, uniqExact(national_id) AS claimants FROM {claims}
                    GROUP BY bank_account, period HAVING claimants >= 3) AS a ON w.bank_account = a.bank_account AND w.period = a.period"""
    expected = {(s, p, f'{{"bank_account":"{b}","claimants":"{n}"}}') for s, p, b, n in clickhouse_client.query(joined).result_rows}
    found = {tuple(row[1:]) for row in clickhouse_client.query(rule.select_sql(fraud.database, columns)).result_rows}
    assert found == expected and any(p == "2025-01" and "NL-shared-x" in d for _, p, d in found)
    plan = "\n".join(row[0] for row in clickhouse_client.query("EXPLAIN " + rule.select_sql(fraud.database, columns, Since(0, 1))).result_rows)
    assert plan.count("ReadFromMergeTree") == 1, plan  # the claims once (the keys landed since: a set built before)


def _granules(plan: str) -> dict[str, tuple[int, int]]:
    """table -> (granules read, granules) of each table read in an `EXPLAIN indexes = 1` plan."""
    found: dict[str, tuple[int, int]] = {}
    for table, body in re.findall(r"ReadFromMergeTree \(([^)]*)\)(.*?)(?=ReadFromMergeTree|\Z)", plan, re.S):
        counts = re.findall(r"Granules: (\d+)/(\d+)", body)
        if counts:
            found[table.split(".")[-1]] = (int(counts[-1][0]), int(counts[-1][1]))
    return found


def test_claim_after_death_reads_the_claims_of_the_touched_subjects_with_a_death_only(clickhouse_client, fraud: Fraud) -> None:  # noqa: ANN001
    # Deaths are rare: of 2,000 claimants who all claimed since the last run, 5 have a registered death.
    # The rule read the claims of every touched claimant (the whole table here); it reads the 5's.
    _create(clickhouse_client, fraud.plan)
    claims, deaths = ddl.qualified(fraud.database, CLAIMS), ddl.qualified(fraud.database, DEATHS)
    clickhouse_client.command(
        f"INSERT INTO {claims} (event_id, occurred_at, national_id, period, benefit_type, bank_account, monthly_amount) "
        "SELECT generateUUIDv4(number), now64(3), concat('k1.', toString(number % 2000)), "
        "concat('2025-', leftPad(toString(1 + intDiv(number, 2000)), 2, '0')), 'unemployment', concat('NL', toString(number)), 400 "
        "FROM numbers(20000)")
    for _ in range(2):  # a redelivered batch: each death and claim of the dead lands twice
        clickhouse_client.command(f"INSERT INTO {deaths} (event_id, occurred_at, national_id, date_of_death) "
                                  "SELECT toUUID(concat('00000000-0000-0000-0000-00000000000', toString(number))), now64(3), "
                                  "concat('k1.', toString(number * 400)), '2025-06-15' FROM numbers(5)")
        clickhouse_client.command(f"INSERT INTO {claims} (event_id, occurred_at, national_id, period, benefit_type, bank_account, monthly_amount) "
                                  "SELECT toUUID(concat('00000000-0000-0000-0001-00000000000', toString(number))), now64(3), "
                                  "concat('k1.', toString(number * 400)), '2025-12', 'housing_allowance', 'NL-x', 400 FROM numbers(5)")
    detector = FraudDetector(fraud.settings, clickhouse_client, leads=NO_BROKER)
    columns = detector._columns()  # noqa: SLF001
    rule = RULES["claim_after_death"]
    since = Since(0, 1)  # every row landed since the last run: all 2,000 claimants are touched
    read = _granules("\n".join(row[0] for row in clickhouse_client.query("EXPLAIN indexes = 1 " + rule.select_sql(
        fraud.database, columns, since)).result_rows))
    done, total = read[CLAIMS]
    assert total >= 300 and done * 20 <= total, f"claim_after_death reads {done} of {total} granules of the claims"
    found = [tuple(row[1:3]) for row in clickhouse_client.query(rule.select_sql(fraud.database, columns, since)).result_rows]
    # the 5 who died in June: their claims of July on (July to October and December), each once however often it landed
    expected = [(f"k1.{n * 400}", f"2025-{month:02d}") for n in range(5) for month in (7, 8, 9, 10, 12)]
    assert sorted(found) == sorted(expected)
    assert sorted(tuple(row[1:3]) for row in clickhouse_client.query(rule.select_sql(fraud.database, columns)).result_rows) == sorted(expected)


def test_a_redelivered_income_counts_once_and_a_redelivered_claim_raises_once(clickhouse_client, fraud: Fraud) -> None:  # noqa: ANN001
    # k1.copy declared 1,500 once, delivered twice (same event): under the threshold. k1.two declared
    # 1,500 twice (two events): over it. Their claims land twice too.
    _create(clickhouse_client, fraud.plan)
    claims, incomes = ddl.qualified(fraud.database, CLAIMS), ddl.qualified(fraud.database, INCOMES)
    for _ in range(2):
        clickhouse_client.command(
            f"INSERT INTO {incomes} (event_id, occurred_at, national_id, period, declared_income) VALUES "
            "('00000000-0000-0000-0000-000000000001', now64(3), 'k1.copy', '2025-04', 1500), "
            "('00000000-0000-0000-0000-000000000002', now64(3), 'k1.two', '2025-04', 1500), "
            "('00000000-0000-0000-0000-000000000003', now64(3), 'k1.two', '2025-04', 1500)")
        clickhouse_client.command(
            f"INSERT INTO {claims} (event_id, occurred_at, national_id, period, benefit_type, bank_account, monthly_amount) VALUES "
            "('00000000-0000-0000-0001-000000000001', now64(3), 'k1.copy', '2025-04', 'income_support', 'NL-a', 400), "
            "('00000000-0000-0000-0001-000000000002', now64(3), 'k1.two', '2025-04', 'income_support', 'NL-b', 400)")
    detector = FraudDetector(fraud.settings, clickhouse_client, leads=NO_BROKER)
    columns = detector._columns()  # noqa: SLF001
    rule = RULES["undeclared_income"]
    for since in (None, Since(0, 1)):  # a full run and an incremental one
        found = clickhouse_client.query(rule.select_sql(fraud.database, columns, since)).result_rows
        assert [(subject, period, details) for _, subject, period, details in found] == [
            ("k1.two", "2025-04", '{"benefit_type":"income_support","declared_income":"3000"}')], since


def test_a_restarted_detector_resumes_from_its_watermark_and_raises_what_a_full_run_raises(clickhouse_client, fraud: Fraud) -> None:  # noqa: ANN001
    _create(clickhouse_client, fraud.plan)
    _land(clickhouse_client, fraud.database, 6_000, 0, 3, subjects=400)
    first = FraudDetector(fraud.settings, clickhouse_client, leads=NO_BROKER)
    first.detect()  # the first run reads every row, then records each rule's watermark
    assert set(watermarks.load(clickhouse_client, fraud.database)) == set(RULES)

    # evidence marked as landed before the watermark after that run: a resumed run does not read it
    late = "k1.late"
    clickhouse_client.command(
        f"INSERT INTO {ddl.qualified(fraud.database, DEATHS)} (event_id, occurred_at, national_id, date_of_death, _landed_at, _landed_seq) "
        f"VALUES (generateUUIDv4(), now64(3), '{late}', '2024-01-15', toStartOfDay(now()) - toIntervalDay(2), 1)")
    clickhouse_client.command(
        f"INSERT INTO {ddl.qualified(fraud.database, CLAIMS)} (event_id, occurred_at, national_id, period, benefit_type, bank_account, "
        f"monthly_amount, _landed_at, _landed_seq) VALUES (generateUUIDv4(), now64(3), '{late}', '2025-03', 'unemployment', 'NL-late', 400, "
        "toStartOfDay(now()) - toIntervalDay(2), 1)")
    _land(clickhouse_client, fraud.database, 1_000, 6_000, 0, subjects=400)  # today: evidence spanning history

    restarted = FraudDetector(fraud.settings, clickhouse_client, leads=NO_BROKER)  # a new sink process: nothing in memory
    restarted.detect()
    raised = {alert.key for alert in restarted.alerts()}
    full = _full(clickhouse_client, restarted)
    assert ("claim_after_death", late, "2025-03") in full - raised, "the restarted run was incremental"
    assert raised == full - {("claim_after_death", late, "2025-03")}

    restarted.full_run()  # what an operator forces: every row again, the same alerts as a full run
    restarted.detect()
    assert {alert.key for alert in restarted.alerts()} == full


def test_a_run_resumes_by_landing_where_a_table_has_one_else_by_day() -> None:
    since = Since(1_700_000_000, 1_700_000_123_456_789)  # microseconds
    claims = {"national_id": "String", "_landed_at": "DateTime", "_landed_seq": "UInt64"}
    deaths = {"national_id": "String", "_landed_at": "DateTime"}  # made before `_landed_seq`
    touched = RULES["claim_after_death"].touched("fraud", since, {CLAIMS: claims, DEATHS: deaths})
    assert f"`{CLAIMS}` WHERE _landed_seq >= 1700000123456789" in touched
    assert f"`{DEATHS}` WHERE _landed_at >= toDateTime(1700000000)" in touched  # the day: every landing since, and more
    assert "_landed_seq" not in RULES["claim_after_death"].touched("fraud", Since(1_700_000_000), {CLAIMS: claims})  # on a cluster


def test_a_changed_rule_starts_over_with_a_full_run() -> None:
    sql = RULES["claim_after_death"].select_sql("fraud", {CLAIMS: {"national_id": "String", "period": "String"},
                                                          DEATHS: {"national_id": "String", "date_of_death": "Date32"}})
    assert watermarks.fingerprint(sql) == watermarks.fingerprint("\n  ".join(sql.split()))  # layout of the text aside
    # a death released as a year instead of a date is another rule's SQL: its watermark does not apply
    as_year = RULES["claim_after_death"].select_sql("fraud", {CLAIMS: {"national_id": "String", "period": "String"},
                                                              DEATHS: {"national_id": "String", "date_of_death": "Int32"}})
    assert watermarks.fingerprint(as_year) != watermarks.fingerprint(sql)


def test_tables_made_before_are_migrated_atomically_and_idempotently(clickhouse_client, fraud: Fraud, backbone_cli,  # noqa: ANN001
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    _create(clickhouse_client, fraud.plan, old=True)
    _land(clickhouse_client, fraud.database, 4_000, 0, 3, subjects=300)
    detector = FraudDetector(fraud.settings, clickhouse_client, leads=NO_BROKER)
    with caplog.at_level(logging.ERROR, logger="backbone.fraud"):
        detector.detect()
    assert f"run `{layout.MIGRATE_COMMAND}` once" in caplog.text and CLAIMS in caplog.text
    before = {alert.key for alert in detector.alerts()}
    counts = {t: clickhouse_client.query(f"SELECT count() FROM {ddl.qualified(fraud.database, t)}").result_rows[0][0]
              for t in (CLAIMS, INCOMES, DEATHS)}

    env = {"BACKBONE_CLICKHOUSE_DSN": fraud.settings.clickhouse_dsn, "BACKBONE_CLICKHOUSE_DATABASE_PREFIX": fraud.settings.clickhouse_database_prefix}
    done = backbone_cli("fraud", "migrate", **env)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.split("migrated:")[1].strip().replace(",", "").split()) == sorted([CLAIMS, INCOMES, DEATHS])
    found = layout.layouts(clickhouse_client, fraud.database)
    for destination in fraud.plan.tables:
        assert not layout.stale(found[destination.table], destination.order_by, destination.projections)
        assert clickhouse_client.query(f"SELECT count() FROM {destination.name}").result_rows[0][0] == counts[destination.table]
    assert not any(name.endswith(layout.RELAYOUT_SUFFIX) for name in found)
    again = backbone_cli("fraud", "migrate", **env)
    assert again.returncode == 0 and "nothing to migrate" in again.stdout  # laid out already

    # interrupted after the swap: a row landed in the old table meanwhile is caught up on the next run
    columns = next(columns for destination, columns in fraud.plan.tables.items() if destination.table == CLAIMS)
    steps = layout.migration(fraud.database, CLAIMS, columns, ("event_id",), None)
    for statement in steps.create:
        clickhouse_client.command(statement)
    clickhouse_client.command(f"INSERT INTO {ddl.qualified(fraud.database, CLAIMS + layout.RELAYOUT_SUFFIX)} "
                              "(event_id, occurred_at, national_id, period, bank_account) "
                              "VALUES (generateUUIDv4(), now64(3), 'k1.meanwhile', '2025-01', 'NL-meanwhile')")
    assert layout.migrate(clickhouse_client, fraud.plan) == [CLAIMS]
    held = clickhouse_client.query(f"SELECT count() FROM {ddl.qualified(fraud.database, CLAIMS)} "
                                   "WHERE national_id = 'k1.meanwhile'").result_rows[0][0]
    assert held == 1 and CLAIMS + layout.RELAYOUT_SUFFIX not in layout.layouts(clickhouse_client, fraud.database)

    migrated = FraudDetector(fraud.settings, clickhouse_client, leads=NO_BROKER)
    migrated.full_run()
    migrated.detect()
    assert {alert.key for alert in migrated.alerts()} == before == _full(clickhouse_client, migrated)


def test_migrate_gives_tables_laid_out_before_the_small_compressed_blocks_and_the_merge_age(clickhouse_client, fraud: Fraud) -> None:  # noqa: ANN001
    _create(clickhouse_client, fraud.plan)
    for table in (CLAIMS, INCOMES):  # as the sink made them before the blocks were made about a granule
        clickhouse_client.command(f"ALTER TABLE {ddl.qualified(fraud.database, table)} RESET SETTING min_compress_block_size, "
                                  f"max_compress_block_size, {ddl.MERGE_AGE_SETTING}")
    # and one whose operator chose another merge age: theirs is kept
    clickhouse_client.command(f"ALTER TABLE {ddl.qualified(fraud.database, DEATHS)} MODIFY SETTING {ddl.MERGE_AGE_SETTING} = 600")
    assert sorted(layout.migrate(clickhouse_client, fraud.plan)) == sorted([CLAIMS, INCOMES])
    for table, found in layout.layouts(clickhouse_client, fraud.database).items():
        if table in (CLAIMS, INCOMES, DEATHS):
            assert layout.settings_sql(fraud.database, table, found) is None, found.engine_full
            age = 600 if table == DEATHS else ddl.PROJECTED_MERGE_AGE_S
            assert f"{ddl.MERGE_AGE_SETTING} = {age}" in found.engine_full
    assert layout.migrate(clickhouse_client, fraud.plan) == []  # set once


def _parts(client, database: str, table: str) -> int:  # noqa: ANN001
    return client.query("SELECT count() FROM system.parts WHERE database = {db:String} AND table = {t:String} AND active",
                        parameters={"db": database, "t": table}).result_rows[0][0]


def test_a_fraud_tables_old_parts_are_merged_into_one_whatever_their_sizes(clickhouse_client, fraud: Fraud) -> None:  # noqa: ANN001
    """A touched subject costs a granule in every part: the sink's tables merge their parts once all are
    older than `ddl.PROJECTED_MERGE_AGE_S`, where ClickHouse's size-ratio merges would leave a big part
    and the small ones beside it (the more the bigger the table). The test shortens the age (an hour in
    the product) and ClickHouse's merge-selecting pause; another recipient's tables are left alone."""
    _create(clickhouse_client, fraud.plan)
    for table, found in layout.layouts(clickhouse_client, fraud.database).items():  # as the sink makes them
        if table in (CLAIMS, INCOMES, DEATHS):
            assert f"{ddl.MERGE_AGE_SETTING} = {ddl.PROJECTED_MERGE_AGE_S}" in found.engine_full, found.engine_full
    claims = ddl.qualified(fraud.database, CLAIMS)
    _land(clickhouse_client, fraud.database, 400_000, 0, 3, subjects=20_000)  # one big part ...
    for index in range(4):  # ... and small landings beside it
        _land(clickhouse_client, fraud.database, 400, 400_000 + 400 * index, 0, subjects=20_000)
    clickhouse_client.command(f"SYSTEM STOP MERGES {claims}")
    clickhouse_client.command(f"ALTER TABLE {claims} MODIFY SETTING merge_selecting_sleep_ms = 500, max_merge_selecting_sleep_ms = 1000")
    rows = clickhouse_client.query(f"SELECT count() FROM {claims}").result_rows[0][0]
    assert _parts(clickhouse_client, fraud.database, CLAIMS) >= 5
    clickhouse_client.command(f"SYSTEM START MERGES {claims}")
    time.sleep(3)  # the size-ratio merges alone: the small parts may merge together, never into the big one
    assert _parts(clickhouse_client, fraud.database, CLAIMS) >= 2
    clickhouse_client.command(f"ALTER TABLE {claims} MODIFY SETTING {ddl.MERGE_AGE_SETTING} = 2")
    deadline = time.monotonic() + 60
    while _parts(clickhouse_client, fraud.database, CLAIMS) > 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _parts(clickhouse_client, fraud.database, CLAIMS) == 1
    assert clickhouse_client.query(f"SELECT count() FROM {claims}").result_rows[0][0] <= rows  # copies collapse, nothing else goes
    assert clickhouse_client.query(f"SELECT uniqExact(event_id) FROM {claims}").result_rows[0][0] == rows


def test_tables_with_the_day_projection_are_flagged_and_migrated_to_the_landing_projection(clickhouse_client, fraud: Fraud) -> None:  # noqa: ANN001
    # as the previous layout made them: ordered by subject, the rules' keys projected by landing day
    client = clickhouse_client
    client.command(ddl.create_database_sql(fraud.database))
    for destination, columns in fraud.plan.tables.items():
        day = tuple(ddl.Projection(layout.DAY_PROJECTION, ("_landed_at", *p.columns[1:]), ("_landed_at",))
                    if p.name == ddl.LANDED_PROJECTION else p for p in destination.projections)
        for statement in ddl.table_sql(destination.database, destination.table, columns, destination.order_by, None,
                                       None, destination.shard_by, day):
            client.command(statement)
    _land(client, fraud.database, 2_000, 0, 3, subjects=150)
    assert layout.stale_tables(layout.layouts(client, fraud.database), [CLAIMS, INCOMES, DEATHS]) == sorted([CLAIMS, DEATHS, INCOMES])
    assert sorted(layout.migrate(client, fraud.plan)) == sorted([CLAIMS, DEATHS, INCOMES])
    found = layout.layouts(client, fraud.database)
    assert not layout.stale_tables(found, [CLAIMS, INCOMES, DEATHS])
    assert ddl.LANDED_PROJECTION in found[CLAIMS].projections
    detector = FraudDetector(fraud.settings, client, leads=NO_BROKER)
    detector.detect()
    _land(client, fraud.database, 300, 2_000, 0, subjects=150)
    detector.detect()  # incremental, by landing
    assert {alert.key for alert in detector.alerts()} == _full(client, detector)
    # the landing is the fraud tables' own: no agreement view shows it
    for statement in fraud.plan.views:
        client.command(statement)
    shown = client.query("SELECT c.name FROM system.columns AS c INNER JOIN system.tables AS t ON c.database = t.database "
                         "AND c.table = t.name WHERE t.database = {db:String} AND t.engine = 'View'",
                         parameters={"db": fraud.database}).result_rows
    assert shown and (ddl.LANDED_SEQ,) not in shown


def test_alerts_fraud_keeps_alerts_as_long_as_the_settings_say(tmp_path: Path) -> None:
    settings = load_settings(clickhouse_dsn="chdb:///unused", data_dir=tmp_path, alerts_retention_days=30)
    config = alerts_topic_config(settings)
    assert config["retention.ms"] == str(30 * 86_400_000)
    assert config["cleanup.policy"] == "compact,delete"  # erasure's tombstones still compact it
    assert load_settings(clickhouse_dsn="chdb:///unused", data_dir=tmp_path).alerts_retention_days == 90



def _old_alerts_sql(database: str) -> str:
    """`alerts` as made before it kept each finding's first alert: a repeat replaced the alert."""
    return (f"CREATE TABLE {ddl.qualified(database, ddl.ALERTS_TABLE)} (kind LowCardinality(String), subject String, "
            "period String, details String, detected_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
            "ENGINE = ReplacingMergeTree ORDER BY (kind, subject, period)")


def test_a_finding_found_again_keeps_its_first_alert_without_a_look_up_and_alerts_made_before_are_migrated(  # noqa: ANN001
        clickhouse_client, fraud: Fraud, caplog: pytest.LogCaptureFixture) -> None:
    from consumers.fraud.alerts import record_findings

    client = clickhouse_client
    _create(client, fraud.plan)
    alerts = ddl.qualified(fraud.database, ddl.ALERTS_TABLE)
    client.command(_old_alerts_sql(fraud.database))
    client.command(f"INSERT INTO {alerts} (kind, subject, period, details, detected_at) "
                   "SELECT 'undeclared_income', concat('k1.', toString(number)), '2025-01', concat('{\"n\":\"', toString(number), '\"}'), "
                   "toDateTime64('2026-01-01 00:00:00', 3, 'UTC') + number FROM numbers(40000)")
    held = client.query(f"SELECT kind, subject, period, details, detected_at FROM {alerts} ORDER BY subject").result_rows
    first = [row for row in held if row[1] == "k1.7"]
    again = "SELECT 'undeclared_income' AS kind, 'k1.7' AS subject, '2025-01' AS period, 'found again' AS details"
    with caplog.at_level(logging.ERROR, logger="backbone.fraud"):
        detector = FraudDetector(fraud.settings, client, leads=NO_BROKER)
        detector.setup()
    assert "alerts" in caplog.text and layout.MIGRATE_COMMAND in caplog.text  # the operator is told what to run
    assert detector._look_up  # noqa: SLF001 - until migrated, runs look their findings up (a repeat would replace the alert)
    assert record_findings(client, fraud.database, "undeclared_income", again, look_up=True) == 0

    assert layout.migrate(client, fraud.plan) == [ddl.ALERTS_TABLE]
    assert client.query(f"SELECT kind, subject, period, details, detected_at FROM {alerts} ORDER BY subject").result_rows == held
    assert not layout.alerts_stale(layout.layouts(client, fraud.database)[ddl.ALERTS_TABLE])
    assert layout.migrate(client, fraud.plan) == []  # laid out already
    migrated = FraudDetector(fraud.settings, client, leads=NO_BROKER)
    migrated.setup()
    assert not migrated._look_up  # noqa: SLF001
    # a repeat is recorded without asking what is held, and collapses into the first alert, details and time
    assert record_findings(client, fraud.database, "undeclared_income", again) == 1
    shown = f"SELECT kind, subject, period, details, detected_at FROM {alerts} FINAL WHERE subject = 'k1.7'"
    assert client.query(shown).result_rows == first
    assert [(a.kind, a.subject, a.period, a.details, a.detected_at) for a in migrated.alerts() if a.subject == "k1.7"] == first
    client.command(f"OPTIMIZE TABLE {alerts} FINAL")
    assert client.query(shown).result_rows == first and client.query(f"SELECT count() FROM {alerts}").result_rows[0][0] == 40_000

    # interrupted after the swap: an alert raised in the old table meanwhile is caught up on the next run
    steps = layout.alerts_migration(fraud.database)
    client.command(ddl.create_alerts_table_sql(fraud.database, table=ddl.ALERTS_TABLE + layout.RELAYOUT_SUFFIX))
    client.command(f"INSERT INTO {ddl.qualified(fraud.database, ddl.ALERTS_TABLE + layout.RELAYOUT_SUFFIX)} (kind, subject, period, details) "
                   "VALUES ('claim_after_death', 'k1.meanwhile', '2025-02', '{}'), ('undeclared_income', 'k1.7', '2025-01', 'copy')")
    assert steps.catch_up.count("NOT IN") == 1 and layout.migrate(client, fraud.plan) == [ddl.ALERTS_TABLE]
    keys = [tuple(row) for row in client.query(f"SELECT kind, subject, period, details FROM {alerts} FINAL "
                                               "WHERE subject IN ('k1.meanwhile', 'k1.7') ORDER BY subject").result_rows]
    assert keys == [("undeclared_income", "k1.7", "2025-01", '{"n":"7"}'), ("claim_after_death", "k1.meanwhile", "2025-02", "{}")]
    assert ddl.ALERTS_TABLE + layout.RELAYOUT_SUFFIX not in layout.layouts(client, fraud.database)


def test_the_rules_sharded_sql_finds_what_the_single_node_sql_finds(clickhouse_client, fraud: Fraud) -> None:  # noqa: ANN001
    # On one node a `GLOBAL IN` and `distributed_product_mode = 'local'` change nothing: the SQL a sharded
    # cluster runs (tests/test_cluster.py checks it is what a cluster accepts) raises the same findings.
    from backbone.clickhouse.cluster import Cluster

    client = clickhouse_client
    _create(client, fraud.plan)
    _land(client, fraud.database, 4_000, 0, 3, subjects=200)
    since = watermarks.resume_point(client)
    _land(client, fraud.database, 600, 4_000, 0, subjects=200)
    detector = FraudDetector(fraud.settings, client, leads=NO_BROKER)
    columns = detector._columns()  # noqa: SLF001
    read = Cluster("backbone", sharded=True).read_settings
    found_any = False
    for rule in RULES.values():
        one = {tuple(row[:3]) for row in client.query(rule.select_sql(fraud.database, columns, since)).result_rows}
        sharded = {tuple(row[:3]) for row in client.query(rule.select_sql(fraud.database, columns, since, sharded=True),
                                                          settings=read).result_rows}  # (kind, subject, period): details take any() claim
        assert sharded == one, rule.kind
        found_any = found_any or bool(one)
    assert found_any


@pytest.mark.integration
def test_a_publish_reads_the_alerts_its_runs_found_not_every_alert_and_a_new_process_reads_every_unpublished_one(
        clickhouse_client, registry_settings: Settings, unique: str) -> None:  # noqa: ANN001
    settings = registry_settings.model_copy(update={"clickhouse_database_prefix": f"t{unique}_"})
    plan = _plan(settings)
    database = plan.databases[0]
    try:
        _create(clickhouse_client, plan)
        _land(clickhouse_client, database, 4_000, 0, 3, subjects=300)
        detector = FraudDetector(settings, clickhouse_client)
        first = detector.detect()  # a process's first publish reads every alert not published
        assert first and {alert.key for alert in first} == _full(clickhouse_client, detector)
        # an alert the runs of this process did not find (raised elsewhere, not published): not read by its publishes
        stray = ("claim_after_death", "k1.stray", "2025-05")
        clickhouse_client.insert(ddl.qualified(database, ddl.ALERTS_TABLE), [[*stray, "{}"]],
                                 column_names=["kind", "subject", "period", "details"])
        _land(clickhouse_client, database, 1_000, 4_000, 0, subjects=600)  # new subjects: new findings
        found = {alert.key for alert in detector.detect()}
        assert found and stray not in found
        assert found == _full(clickhouse_client, detector) - {alert.key for alert in first}, "each new alert published, once"
        assert detector.detect() == []  # found again: published already
        restarted = FraudDetector(settings, clickhouse_client)  # a new sink process
        assert [alert.key for alert in restarted.detect()] == [stray]
        # found by a run, its alert not yet on the replica a publish reads (a cluster's replication): sent once it is there
        late = ("undeclared_income", "k1.late", "2025-07")
        detector._found.add(late)  # noqa: SLF001 - what a run's `record` adds
        assert detector.publish() == []
        clickhouse_client.insert(ddl.qualified(database, ddl.ALERTS_TABLE), [[*late, "{}"]], column_names=["kind", "subject", "period", "details"])
        assert [alert.key for alert in detector.publish()] == [late]
        assert detector.publish() == []
    finally:
        clickhouse_client.command(f"DROP DATABASE IF EXISTS {quote_identifier(database)} SYNC")
