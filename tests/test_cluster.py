"""On a ClickHouse cluster (`BACKBONE_CLICKHOUSE_CLUSTER`) the sinks' DDL, the erasure and the grants
run `ON CLUSTER` with `Replicated*` tables (and `Distributed` ones over the shards when sharded);
without one, the single-node DDL is unchanged. Every generated statement is parsed by ClickHouse's
own parser (chDB's `formatQuery` and `EXPLAIN AST`), so a typo that only a server would catch fails here.
A table a sink created but the answering server does not have yet is retried, never dead-lettered."""

from __future__ import annotations

import re
import uuid

import pytest
from confluent_kafka import Message

from backbone.clickhouse.cluster import Cluster, cluster_of, generation_path
from backbone.control.erasure import SUBJECT_COLUMN, SUBJECT_TABLES, RowTarget, delete_sql, purge_sql
from backbone.events.catalog import load_catalog
from backbone.policy.agreements import load_agreements
from backbone.quality.contract import load_quality
from backbone.quality.window import WindowState
from backbone.settings import PROJECT_ROOT, load_settings
from consumers import ddl
from consumers.batching import TargetUnavailable, Written
from consumers.clickhouse_target import ClickHouseTarget, transient
from consumers.fraud import FraudDetector
from consumers.fraud.layout import Layout, migration, settings_sql
from consumers.fraud.registry import Since
from consumers.fraud.watermarks import SLACK_US, resume_from, resume_point, resume_sql
from consumers.plans import Destination, SinkPlan, audit_plan, checkpoints_plan, operations_plan, recipient_plan, timestamps_plan
from consumers.quality import (
    QUALITY_TABLES,
    QualityTarget,
    land_windows,
    quality_database,
    quality_tables_sql,
    refresh_scorecards,
    setup_quality,
)
from consumers.typemap import Column

CLUSTER = "backbone"  # 2 shards x 2 replicas, as remote_servers would name it


def _charter():  # noqa: ANN202
    return load_agreements(PROJECT_ROOT / "agreements", load_catalog(PROJECT_ROOT / "schemas"))


def _statements(sharded: bool) -> list[str]:
    """Every DDL, erasure and grant statement a 2-shard x 2-replica deployment runs."""
    settings = load_settings(clickhouse_cluster=CLUSTER if sharded is not None else None, clickhouse_sharded=bool(sharded),
                             clickhouse_dsn="chdb:///unused")
    charter = _charter()
    recipients = sorted({a.recipient for a in charter.agreements})
    plans = [recipient_plan(settings, charter, r) for r in recipients]
    plans += [make(settings, charter.catalog) for make in (audit_plan, checkpoints_plan, operations_plan, timestamps_plan)]
    statements: list[str] = []
    for plan in plans:
        statements += [ddl.create_database_sql(database, plan.cluster) for database in plan.databases]
        for destination, columns in plan.tables.items():
            statements += ddl.table_sql(destination.database, destination.table, columns, destination.order_by,
                                        destination.retention_days, plan.cluster, destination.shard_by)
            for table in ddl.cluster_tables(destination.table, plan.cluster):
                statements.append(ddl.add_columns_sql(destination.database, table, [Column("extra", "Nullable(String)")], plan.cluster))
            statements += ddl.coarsen_landed_at_sql(destination.database, destination.table, plan.cluster)
        statements += plan.views
    cluster = cluster_of(settings)
    statements += ddl.fraud_tables_sql(ddl.database_name("", settings.fraud_recipient), cluster)
    statements += quality_tables_sql(quality_database(settings), cluster)
    targets = [RowTarget("fraud", "welfare_benefit_claimed", "national_id", ("x",)),
               *(RowTarget("fraud", table, SUBJECT_COLUMN, ("x",)) for table in SUBJECT_TABLES)]
    statements += [delete_sql(target, cluster) for target in targets]
    statements += [purge_sql(target.database, target.table, cluster) for target in targets]
    views = {recipient: ddl.agreement_views(charter, recipient) for recipient in recipients}
    statements += ddl.grants_sql("", views, {"backbone_sink_fraud": ddl.Credential.of("pw", "salt")}, cluster)
    return statements


def _parsed(client, statement: str) -> tuple[str, str]:  # noqa: ANN001
    """ClickHouse's own formatting of the statement, and its AST (both parse only, run nothing)."""
    formatted = client.query("SELECT formatQuery({q:String})", parameters={"q": statement}).result_rows[0][0]
    bound = statement.replace("{values:Array(String)}", "['x']")  # EXPLAIN substitutes parameters
    ast = "\n".join(row[0] for row in client.query("EXPLAIN AST " + bound).result_rows)
    return formatted, ast


def test_cluster_ddl_erasure_and_grants_parse_and_run_on_cluster_with_replicated_tables(clickhouse_client) -> None:  # noqa: ANN001
    statements = _statements(sharded=True)
    engines: list[str] = []
    for statement in statements:
        formatted, ast = _parsed(clickhouse_client, statement)
        assert f" ON CLUSTER {CLUSTER}" in formatted, formatted
        engines += re.findall(r"Storage definition.*?\n\s*Function (\w+)", ast, re.S)
        if formatted.startswith("CREATE TABLE"):
            assert re.search(r"ENGINE = (Replicated\w*MergeTree\('/clickhouse/tables/\{shard\}/\{database\}/\{table\}', '\{replica\}'(, \w+)?\)"
                             r"|Distributed\('backbone')", formatted), formatted
    assert engines and set(engines) <= {"ReplicatedReplacingMergeTree", "Distributed"}
    assert engines.count("ReplicatedReplacingMergeTree") == engines.count("Distributed")  # one Distributed per local table
    kinds = {statement.split()[0] for statement in statements}
    assert {"CREATE", "ALTER", "DELETE", "GRANT", "REVOKE"} <= kinds


def test_sharded_tables_place_one_subject_on_one_shard() -> None:
    distributed = [s for s in _statements(sharded=True) if "ENGINE = Distributed" in s]
    keys = {re.search(r"`(\w+)`\.`(\w+)` ON CLUSTER", s).group(2): re.search(r"cityHash64\((.*)\)\)$", s).group(1) for s in distributed}
    assert keys["welfare_benefit_claimed"] == "`national_id`"  # the subject's pseudonym
    assert keys["events"] == "assumeNotNull(`subject_token`)"  # the audit trail, by the subject's oversight token
    assert keys["alerts"] == "subject" and keys["alerts_published"] == "subject"
    assert keys["checkpoints"] == "`writer`"  # one writer's chain on one shard
    assert keys["windows"] == keys["scorecards"] == "event_type"  # an event type's windows merge into its scorecard on one shard
    # erasure deletes in the shards' tables: a Distributed table takes no DELETE
    assert delete_sql(RowTarget("fraud", "alerts", "subject", ("x",)), Cluster(CLUSTER, True)).startswith(
        "DELETE FROM `fraud`.`alerts_local` ON CLUSTER `backbone`")


def test_replicated_unsharded_cluster_has_no_distributed_tables(clickhouse_client) -> None:  # noqa: ANN001
    statements = _statements(sharded=False)
    assert not any("Distributed" in s or "_local" in s for s in statements)
    for statement in statements:
        formatted, _ = _parsed(clickhouse_client, statement)
        assert f" ON CLUSTER {CLUSTER}" in formatted


def test_single_node_ddl_is_unchanged_without_a_cluster(clickhouse_client) -> None:  # noqa: ANN001
    statements = _statements(sharded=None)  # type: ignore[arg-type]
    assert not any("ON CLUSTER" in s or "Replicated" in s or "Distributed" in s for s in statements)
    assert any("ENGINE = ReplacingMergeTree" in s for s in statements)


def test_quality_tables_are_replicated_on_cluster_and_plain_on_one_node(clickhouse_client) -> None:  # noqa: ANN001
    for sharded in (True, False):
        statements = quality_tables_sql("quality", Cluster(CLUSTER, sharded))
        tables = [s for s in statements if s.startswith("CREATE TABLE")]
        assert len(tables) == len(QUALITY_TABLES) * (2 if sharded else 1)
        for statement in statements:
            formatted, _ = _parsed(clickhouse_client, statement)
            assert f" ON CLUSTER {CLUSTER}" in formatted, formatted
        assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}', computed_at)" in "".join(tables)
        assert ("`quality`.`windows_local`" in "".join(tables)) is sharded
    single = quality_tables_sql("quality")
    assert not any("ON CLUSTER" in s or "Replicated" in s or "Distributed" in s for s in single)
    assert "ENGINE = ReplacingMergeTree(computed_at) ORDER BY (provider, event_type, hour, dimension)" in single[-1]


def test_a_table_missing_right_after_its_ddl_is_retried_not_dead_lettered(clickhouse_client) -> None:  # noqa: ANN001
    # As when a service balances requests over replicas: the CREATE ran on one, the INSERT reaches another.
    database = f"cluster_{uuid.uuid4().hex[:8]}"
    destination = Destination(database, "t")
    plan = SinkPlan("t", "g", "t", lambda _topic: destination, (database,), {destination: [Column("event_id", "String")]})
    target = ClickHouseTarget(load_settings(clickhouse_dsn="chdb:///unused"), plan, clickhouse_client, registry=None)  # type: ignore[arg-type]
    target.setup()
    clickhouse_client.command(f"DROP TABLE {destination.name}")
    written = Written()
    with pytest.raises(TargetUnavailable):
        target._insert(destination, ["event_id"], [Message(topic="t", value=b"\x00\x00\x00\x00\x01")], written)
    assert written.rejected == []
    try:
        clickhouse_client.command(f"INSERT INTO {database}.nowhere VALUES ('x')")
    except Exception as exc:  # noqa: BLE001 - ClickHouse's own UNKNOWN_TABLE
        assert transient(exc)
    clickhouse_client.command(f"DROP DATABASE {database}")


def test_fraud_tables_keep_one_subject_on_one_shard_ordered_by_subject_and_migrate_on_cluster(clickhouse_client) -> None:  # noqa: ANN001
    settings = load_settings(clickhouse_cluster=CLUSTER, clickhouse_sharded=True, clickhouse_dsn="chdb:///unused")
    plan = recipient_plan(settings, _charter(), settings.fraud_recipient)
    claims, columns = next((d, c) for d, c in plan.tables.items() if d.table == "welfare_benefit_claimed")
    local, distributed = ddl.table_sql(claims.database, claims.table, columns, claims.order_by, claims.retention_days,
                                       plan.cluster, claims.shard_by, claims.projections)
    assert "ORDER BY (`national_id`, `event_id`)" in local and "PROJECTION `landed_seq`" in local and "ReplicatedReplacingMergeTree(" in local
    assert distributed.endswith("cityHash64(`national_id`))")  # the subject the rows are ordered by places them
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}', since)" in "".join(
        ddl.fraud_tables_sql("fraud", plan.cluster))  # the watermarks keep the newest day per rule
    steps = migration(claims.database, claims.table, columns, claims.order_by, claims.retention_days, plan.cluster,
                      claims.shard_by, claims.projections)
    for statement in (*steps.create, steps.swap, *steps.drop):
        formatted, _ = _parsed(clickhouse_client, statement)
        assert f" ON CLUSTER {CLUSTER}" in formatted, formatted
    assert "`welfare_benefit_claimed_local` AND `fraud`.`welfare_benefit_claimed__relayout_local`" in steps.swap
    for statement in (steps.copy, steps.catch_up):  # rows go through the Distributed tables, placed by the same key
        formatted, _ = _parsed(clickhouse_client, statement)
        assert "_local" not in statement and "distributed_foreground_insert = 1" in formatted, formatted
    assert "GLOBAL NOT IN" in steps.catch_up


def test_a_second_fraud_migration_on_a_cluster_gets_a_keeper_path_of_its_own(clickhouse_client) -> None:  # noqa: ANN001
    # After a migration the live table is the one it created (`<table>__relayout_local`, swapped in), with
    # that name's Keeper path: a second migration creating `<table>__relayout_local` again with the same
    # path would collide with it (REPLICA_ALREADY_EXISTS) on every replica.
    settings = load_settings(clickhouse_cluster=CLUSTER, clickhouse_sharded=True, clickhouse_dsn="chdb:///unused")
    plan = recipient_plan(settings, _charter(), settings.fraud_recipient)
    claims, columns = next((d, c) for d, c in plan.tables.items() if d.table == "welfare_benefit_claimed")
    first, second = (migration(claims.database, claims.table, columns, claims.order_by, claims.retention_days, plan.cluster,
                               claims.shard_by, claims.projections, generation=generation) for generation in ("g20270101000000", "g20270102000000"))
    paths = []
    for steps in (first, second):
        local = steps.create[0]
        formatted, _ = _parsed(clickhouse_client, local)
        assert " ON CLUSTER backbone" in formatted and "welfare_benefit_claimed__relayout_local" in formatted
        paths.append(re.search(r"ReplicatedReplacingMergeTree\('([^']+)', '\{replica\}'\)", formatted).group(1))
    assert paths == ["/clickhouse/tables/{shard}/{database}/{table}.g20270101000000", "/clickhouse/tables/{shard}/{database}/{table}.g20270102000000"]
    assert "{table}" in paths[0] and len(set(paths)) == 2  # the macro keeps one path per table name, the suffix one per migration
    default = migration(claims.database, claims.table, columns, claims.order_by, claims.retention_days, plan.cluster,
                        claims.shard_by, claims.projections)
    assert re.search(r"\{table\}\.g\d{14}'", default.create[0])  # each migration run: the second it was planned
    single = migration(claims.database, claims.table, columns, claims.order_by, claims.retention_days)
    assert "ENGINE = ReplacingMergeTree\n" in single.create[0]  # one node: no Keeper, no path
    with pytest.raises(ValueError, match="letters and digits"):
        generation_path("g1/../x")
    # a table laid out before the small compressed blocks gets them on every replica
    blocks = settings_sql("fraud", "welfare_benefit_claimed_local", Layout(("national_id", "event_id"), frozenset()), plan.cluster)
    formatted, _ = _parsed(clickhouse_client, blocks)
    assert " ON CLUSTER backbone" in formatted and ("MODIFY SETTING min_compress_block_size = 2048, max_compress_block_size = 8192, "
                                                    f"min_age_to_force_merge_seconds = {ddl.PROJECTED_MERGE_AGE_S}") in formatted


def test_a_fraud_run_on_a_cluster_resumes_by_landing_before_every_replicas_inserts(clickhouse_client) -> None:  # noqa: ANN001
    cluster = Cluster(CLUSTER, sharded=True)
    sql = resume_sql(cluster, "fraud")
    formatted, _ = _parsed(clickhouse_client, sql)
    assert "clusterAllReplicas('backbone', system.processes)" in formatted  # every replica's inserts in flight
    assert "clusterAllReplicas('backbone', system.replication_queue)" in formatted and "GET_PART" in formatted
    assert "clusterAllReplicas" not in resume_sql(None)
    day, now = 1_800_000_000 - 3600, 1_800_000_000_000_000
    # nothing running: now, less the skew slack (the landing watermark, not the day as before)
    assert resume_from(day, now, None, None, slack_s=10) == Since(day, now - 10_000_000 - SLACK_US)
    # an insert running for 2 s on some replica: its rows may carry a landing 2 s back
    assert resume_from(day, now, 2.0, None, slack_s=10).landed_seq == now - 12_000_000 - SLACK_US
    # a part queued 60 s ago on a replica that has not fetched it yet
    assert resume_from(day, now, 0.5, now // 1_000_000 - 60, slack_s=10).landed_seq == now - 70_000_000 - SLACK_US
    assert resume_from(day, now, None, None, slack_s=0).landed_seq == now - SLACK_US  # one node: the clock's allowance only
    # one node: run here, the server's own processes, no cluster slack
    point = resume_point(clickhouse_client)
    assert point.landed_seq is not None and point.landed_seq > 0 and point.day > 0
    assert load_settings().fraud_cluster_slack_s == 10.0


def test_inserts_through_distributed_tables_are_synchronous_on_a_sharded_cluster(clickhouse_client, unique: str) -> None:  # noqa: ANN001
    sharded = load_settings(clickhouse_cluster=CLUSTER, clickhouse_sharded=True, clickhouse_dsn="chdb:///unused")
    replicated = load_settings(clickhouse_cluster=CLUSTER, clickhouse_dsn="chdb:///unused")
    quality = QualityTarget(sharded, clickhouse_client, {})
    assert quality.insert_settings == {"distributed_foreground_insert": 1}  # windows and scorecards: no scorecard misses a window
    assert QualityTarget(replicated, clickhouse_client, {}).insert_settings == {}
    assert QualityTarget(load_settings(clickhouse_dsn="chdb:///unused"), clickhouse_client, {}).insert_settings == {}
    plan = recipient_plan(sharded, _charter(), sharded.fraud_recipient)
    sink = ClickHouseTarget(sharded, plan, clickhouse_client, registry=None)  # type: ignore[arg-type]
    assert sink._insert_settings["distributed_foreground_insert"] == 1  # noqa: SLF001 - a batch is on its shards before the commit
    # alerts, published alerts, watermarks: the next publish sees what was published, so no alert goes out twice
    assert FraudDetector(sharded, clickhouse_client)._insert_settings == {"distributed_foreground_insert": 1}  # noqa: SLF001
    # ClickHouse takes the setting on an insert (chDB: one node, where it changes nothing)
    database = f"quality_{unique}"
    contracts = load_quality(PROJECT_ROOT / "schemas", load_catalog(PROJECT_ROOT / "schemas"))
    event_type = sorted(contracts)[0]
    setup_quality(clickhouse_client, database)
    try:
        landed, _, touched = land_windows(clickhouse_client, database, contracts,
                                          [(f"{event_type}|1000|w".encode(), WindowState(event_type, 1000).to_bytes())],
                                          quality.insert_settings)
        cards = refresh_scorecards(clickhouse_client, database, contracts, touched, quality.insert_settings)
        assert landed == 1 and cards and cards[0].event_type == event_type
    finally:
        clickhouse_client.command(f"DROP DATABASE IF EXISTS {database} SYNC")


def test_fraud_rules_on_a_sharded_cluster_read_shard_by_shard_and_send_a_set_spanning_shards_to_every_shard(clickhouse_client) -> None:  # noqa: ANN001
    # On a sharded cluster every fraud table is Distributed: a rule's `IN (SELECT ... FROM <Distributed>)` inside
    # a query over another is refused by ClickHouse's default (`distributed_product_mode = 'deny'`). The
    # subject's keys sit on one shard, so each shard reads its own local table (`'local'`); a bank account's
    # claimants span shards, so that rule's touched keys are one set sent to every shard (`GLOBAL IN`).
    from backbone.clickhouse.cluster import read_settings
    from consumers.fraud.alerts import insert_alerts_sql
    from consumers.fraud.rules import BUILT_IN

    settings = load_settings(clickhouse_cluster=CLUSTER, clickhouse_sharded=True, clickhouse_dsn="chdb:///unused")
    plan = recipient_plan(settings, _charter(), settings.fraud_recipient)
    columns = {d.table: {**{c.name: c.type for c in cols}, ddl.LANDED_AT: "DateTime", ddl.LANDED_SEQ: "UInt64"}
               for d, cols in plan.tables.items()}
    since = Since(1_800_000_000, 1_800_000_000_000_000)
    spanning = set()
    for rule in BUILT_IN:
        assert not rule.missing(columns), rule.kind
        full = rule.select_sql("fraud", columns, sharded=True)
        incremental = rule.select_sql("fraud", columns, since, sharded=True)
        for statement in (insert_alerts_sql("fraud", rule.kind, full), incremental):
            _parsed(clickhouse_client, statement)
        assert "_local" not in incremental  # the Distributed tables; each shard's own under 'local'
        if "GLOBAL IN" in incremental:
            spanning.add(rule.kind)
        single = rule.select_sql("fraud", columns, since)
        assert "GLOBAL" not in single and single == rule.select_sql("fraud", columns, since, sharded=False)
        assert full == rule.select_sql("fraud", columns)  # the full run's SQL (and its watermark) is the single node's
    assert spanning == {"shared_bank_account"}  # keyed by account and period, not by the subject the tables are sharded by
    assert FraudDetector(settings, clickhouse_client)._read_settings == {"distributed_product_mode": "local"}  # noqa: SLF001
    assert read_settings(Cluster(CLUSTER)) == {} and read_settings(None) == {}  # replicated only, one node: nothing to say
    unsharded = load_settings(clickhouse_cluster=CLUSTER, clickhouse_dsn="chdb:///unused")
    assert FraudDetector(unsharded, clickhouse_client)._read_settings == {}  # noqa: SLF001
    # ClickHouse knows the setting and its value (chDB: one node, where it changes nothing)
    assert clickhouse_client.query("SELECT getSetting('distributed_product_mode')",
                                   settings=Cluster(CLUSTER, sharded=True).read_settings).result_rows == [("local",)]


def test_alerts_migration_to_first_alerts_runs_on_cluster_through_the_distributed_tables(clickhouse_client) -> None:  # noqa: ANN001
    from consumers.fraud.layout import alerts_migration

    cluster = Cluster(CLUSTER, sharded=True)
    assert "'{replica}', first_seen)" in ddl.fraud_tables_sql("fraud", cluster)[1]  # each finding's first alert kept
    steps = alerts_migration("fraud", cluster, generation="g20270101000000")
    local, distributed = steps.create
    for statement in (*steps.create, steps.swap, *steps.drop):
        formatted, _ = _parsed(clickhouse_client, statement)
        assert f" ON CLUSTER {CLUSTER}" in formatted, formatted
    assert "`alerts__relayout_local`" in local and "{table}.g20270101000000" in local and "'{replica}', first_seen)" in local
    assert distributed.endswith("cityHash64(subject))")  # placed as `alerts` is: by subject
    assert "`alerts_local` AND `fraud`.`alerts__relayout_local`" in steps.swap
    for statement in (steps.copy, steps.catch_up):
        formatted, _ = _parsed(clickhouse_client, statement)
        assert "_local" not in statement and "distributed_foreground_insert = 1" in formatted, formatted
    assert "GLOBAL NOT IN" in steps.catch_up and "GLOBAL" not in alerts_migration("fraud").catch_up
