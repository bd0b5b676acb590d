"""ClickHouse users per sink workload: each user's grants are exactly what its sink's code does.

As tests/test_acls.py does for Kafka and tests/test_registry_users.py for the registry, the
privileges are collected from the code: each sink workload's own code (a recipient's sink and its
fraud rules, the audit sink) runs its set-up, a schema change, an insert per table and the fraud
rules on the session's chDB through a client that notes every statement, and each statement is read
for the privilege it needs on which database. The grants `backbone clickhouse grants` applies must
give each user exactly those, on its own database only; the credentials `backbone clickhouse users
provision` makes must be the ones each workload's DSN logs in with.
"""

from __future__ import annotations

import dataclasses
import re
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from confluent_kafka import Message

from backbone.clickhouse.cluster import Cluster
from backbone.clickhouse.users import Credential, provision, read_credentials, with_user
from backbone.errors import BackboneError
from backbone.events.catalog import load_catalog
from backbone.policy.agreements import load_agreements
from backbone.quality.contract import load_quality
from backbone.quality.window import WindowState
from backbone.settings import PROJECT_ROOT, load_settings
from consumers import ddl
from consumers.batching import Written
from consumers.clickhouse_target import ClickHouseTarget
from consumers.fraud import FraudDetector
from consumers.plans import SinkPlan, audit_plan, checkpoints_plan, operations_plan, recipient_plan, timestamps_plan
from consumers.quality import land_windows, quality_database, refresh_scorecards, setup_quality

GRANT = re.compile(r"GRANT(?: ON CLUSTER `[^`]+`)? (?P<privileges>[A-Z ,]+) ON (?P<database>`[^`]+`|\*)\.\* TO `(?P<grantee>[^`]+)`")
BARE_READ = re.compile(r"\b(?:FROM|JOIN) ([A-Za-z0-9_]+)\.[A-Za-z0-9_]+")  # db.table unquoted (consumers/quality.py)
QUALIFIED = re.compile(r"`((?:[^`\\]|\\.)+)`\.`((?:[^`\\]|\\.)+)`")
# The statement's own object (the one it creates, alters or inserts into), and what that needs.
NAME = r"`?([^`.\s]+)`?"  # a database, quoted or not (consumers/quality.py writes them bare)
TARGETS = (
    (re.compile(rf"CREATE DATABASE IF NOT EXISTS {NAME}"), ("CREATE DATABASE",)),
    (re.compile(rf"CREATE TABLE IF NOT EXISTS {NAME}"), ("CREATE TABLE",)),
    (re.compile(rf"CREATE OR REPLACE VIEW {NAME}"), ("CREATE VIEW", "DROP VIEW")),  # REPLACE drops the old view
    (re.compile(rf"ALTER TABLE {NAME}\.`?[^`\s]+`?(?: ON CLUSTER `[^`]+`)? ADD COLUMN"), ("ALTER ADD COLUMN",)),
    (re.compile(rf"INSERT INTO {NAME}"), ("INSERT",)),
)


@pytest.fixture(scope="module")
def charter():  # noqa: ANN201 - backbone.policy.agreements.Charter
    return load_agreements(PROJECT_ROOT / "agreements", load_catalog(PROJECT_ROOT / "schemas"))


class Noting:
    """The session's chDB client, noting every statement sent through it. Inserts are noted, not run:
    their AvroConfluent blocks would need the registry, and the privilege is the INSERT's whatever the rows."""

    def __init__(self, client: Any) -> None:  # noqa: ANN401 - a clickhouse-connect Client
        self.client = client
        self.statements: list[str] = []

    def command(self, sql: str, *args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
        self.statements.append(sql)
        return self.client.command(sql, *args, **kwargs)

    def query(self, sql: str, *args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
        self.statements.append(sql)
        return self.client.query(sql, *args, **kwargs)

    def raw_insert(self, table: str, column_names: Any = None, **_: Any) -> None:  # noqa: ANN401
        self.statements.append(f"INSERT INTO {table} ({', '.join(column_names or [])}) FORMAT AvroConfluent")

    def insert(self, table: str, data: Any, column_names: Any = None, **_: Any) -> None:  # noqa: ANN401
        self.statements.append(f"INSERT INTO {table} ({', '.join(column_names or [])}) VALUES")


def needed(statement: str) -> set[tuple[str, str]]:
    """(privilege, database) a statement of a sink needs: its own object's privilege, and SELECT on every
    table its SELECT part reads (a view's runs as its definer, the sink: SQL SECURITY DEFINER). Reads of
    `system` tables and EXISTS need none (a user sees what it holds any privilege on)."""
    text = " ".join(statement.split())
    if text.startswith("EXISTS"):
        return set()
    for pattern, privileges in TARGETS:
        match = pattern.match(text)
        if match:
            rest = text[match.end():]
            reads = rest[rest.find("SELECT "):] if "SELECT " in rest else ""
            return {(privilege, match[1]) for privilege in privileges} | {("SELECT", m[1]) for m in QUALIFIED.finditer(reads)}
    assert text.startswith(("SELECT", "WITH")), f"a statement of the sinks the grants do not model: {text[:120]}"
    return {("SELECT", m[1]) for m in QUALIFIED.finditer(text)} | {("SELECT", m[1]) for m in BARE_READ.finditer(text) if m[1] != "system"}


def _grown(plan: SinkPlan) -> SinkPlan:
    """The plan as an older charter had it: each table with its key and first columns only, no views yet."""
    tables = {destination: [c for i, c in enumerate(columns) if i < 2 or c.name in destination.order_by]
              for destination, columns in plan.tables.items()}
    return dataclasses.replace(plan, tables=tables, views=[])


def _land(noting: Noting, settings, plans: list[SinkPlan]) -> None:  # noqa: ANN001
    for plan in plans:
        ClickHouseTarget(settings, _grown(plan), noting, registry=None).setup()  # type: ignore[arg-type]
        target = ClickHouseTarget(settings, plan, noting, registry=None)  # type: ignore[arg-type]
        target.setup()  # the newer schema's columns: ALTER TABLE ... ADD COLUMN
        for destination, columns in plan.tables.items():
            target._insert(destination, [c.name for c in columns], [Message(value=b"\0\0\0\0\1")], Written())


@pytest.fixture(scope="module")
def collected(charter, clickhouse_client) -> tuple[str, dict[str, set[tuple[str, str]]]]:  # noqa: ANN001
    """Database prefix, and each sink workload -> the (privilege, database) its code needs, run on the session's chDB."""
    prefix = f"cu{uuid.uuid4().hex[:6]}_"
    settings = load_settings(clickhouse_database_prefix=prefix)
    workloads: dict[str, set[tuple[str, str]]] = {}
    for recipient in sorted({a.recipient for a in charter.agreements}):
        noting = Noting(clickhouse_client)
        _land(noting, settings, [recipient_plan(settings, charter, recipient)])
        if recipient == settings.fraud_recipient:  # consumers.sink: the fraud rules run on the fraud sink's client
            detector = FraudDetector(settings, noting, registry=None, leads=lambda: True)  # type: ignore[arg-type]
            detector.detect()
            detector.alerts()
        workloads[f"sink-{recipient}"] = set().union(*map(needed, noting.statements))
    noting = Noting(clickhouse_client)
    _land(noting, settings, [plan(settings, charter.catalog) for plan in (audit_plan, checkpoints_plan, operations_plan, timestamps_plan)])
    # app/cli/sink.py: the audit sink lands the quality windows and scorecards too (consumers/quality.py)
    contracts = load_quality(settings.schemas_dir, charter.catalog)
    event_type = sorted(contracts)[0]
    quality = quality_database(settings)
    setup_quality(noting, quality)
    _, _, touched = land_windows(noting, quality, contracts, [(f"{event_type}|1000|w".encode(), WindowState(event_type, 1000).to_bytes())])
    refresh_scorecards(noting, quality, contracts, touched)
    workloads["sink-audit"] = set().union(*map(needed, noting.statements))
    return prefix, workloads


def _granted(statements: list[str]) -> dict[str, set[tuple[str, str]]]:
    granted: dict[str, set[tuple[str, str]]] = {}
    for statement in statements:
        if statement.startswith("GRANT"):
            match = GRANT.fullmatch(statement)
            if match:  # a role's SELECT on one view is not a database-wide grant: not a sink's
                database = match["database"].strip("`")
                granted.setdefault(match["grantee"], set()).update((p.strip(), database) for p in match["privileges"].split(","))
    return granted


def test_each_sink_user_is_granted_exactly_what_its_workload_s_code_does(charter, collected) -> None:  # noqa: ANN001
    prefix, workloads = collected
    recipients = {a.recipient for a in charter.agreements}
    users = ddl.sink_workloads(prefix, recipients)
    assert set(users) == set(workloads) == {*(f"sink-{r}" for r in recipients), "sink-audit"}
    views = {r: ddl.agreement_views(charter, r) for r in recipients}
    granted = _granted(ddl.grants_sql(prefix, views))
    for workload, needs in workloads.items():
        databases = {ddl.database_name(prefix, workload.removeprefix("sink-"))}
        if workload == "sink-audit":
            databases.add(ddl.database_name(prefix, ddl.QUALITY_DATABASE))
        assert {db for _, db in needs} == databases, workload  # its own database(s), nothing else
        assert granted[users[workload]] == needs, workload
    # the fraud rules read and fill the fraud database; the audit sink defines audit.decisions over audit.events
    assert ("SELECT", f"{prefix}fraud") in workloads["sink-fraud"] and ("INSERT", f"{prefix}fraud") in workloads["sink-fraud"]
    assert {("CREATE VIEW", f"{prefix}audit"), ("SELECT", f"{prefix}audit")} <= workloads["sink-audit"]


def test_on_a_cluster_sink_users_may_run_their_ddl_on_cluster_and_roles_may_not(charter) -> None:  # noqa: ANN001
    settings = load_settings(clickhouse_database_prefix="", clickhouse_cluster="backbone")
    recipients = sorted({a.recipient for a in charter.agreements})
    plans = [recipient_plan(settings, charter, r) for r in recipients]
    plans += [plan(settings, charter.catalog) for plan in (audit_plan, checkpoints_plan, operations_plan, timestamps_plan)]
    ddl_statements = [statement for p in plans for statement in (
        *(ddl.create_database_sql(d, p.cluster) for d in p.databases), *p.views,
        *(s for d, columns in p.tables.items() for s in ddl.table_sql(d.database, d.table, columns, d.order_by, d.retention_days, p.cluster)))]
    ddl_statements += ddl.fraud_tables_sql("fraud", plans[0].cluster)
    assert all(" ON CLUSTER `backbone`" in statement for statement in ddl_statements)  # every sink's DDL: CLUSTER needed
    views = {r: ddl.agreement_views(charter, r) for r in recipients}
    statements = ddl.grants_sql("", views, cluster=Cluster("backbone"))
    cluster_grants = {s.rsplit("TO ", 1)[1].strip("`") for s in statements if " CLUSTER ON *.* TO " in s}
    assert cluster_grants == set(ddl.sink_users("", views))
    assert all(" ON CLUSTER `backbone`" in s for s in statements)


def test_provision_makes_each_workload_a_password_a_dsn_and_a_credential(tmp_path: Path) -> None:
    users = ddl.sink_workloads("", ["fraud", "welfare"])
    passwords, credentials = tmp_path / "ch" / "passwords", tmp_path / "ch" / "credentials.json"
    made = provision(users, passwords, credentials, "http://clickhouse-backbone.backbone.svc.cluster.local:8123/default")
    assert set(made) == set(users.values()) == {"backbone_sink_fraud", "backbone_sink_welfare", "backbone_sink_audit"}
    for workload, user in users.items():
        password = (passwords / f"{workload}.password").read_text().strip()
        dsn = urlsplit((passwords / f"{workload}.dsn").read_text())
        assert (unquote(dsn.username), unquote(dsn.password), dsn.hostname) == (user, password, "clickhouse-backbone.backbone.svc.cluster.local")
        assert made[user].matches(password) and not made[user].matches(password + "x")
        assert stat.S_IMODE((passwords / f"{workload}.password").stat().st_mode) == 0o600
    text = credentials.read_text()
    assert not [p for p in passwords.glob("*.password") if p.read_text().strip() in text]  # hashes only
    again = provision(users, passwords, credentials)  # kept: same passwords, same credentials
    assert again == made == read_credentials(credentials)
    (passwords / "sink-fraud.password").write_text("a new password\n")  # rotated: its credential follows
    rotated = provision(users, passwords, credentials)
    assert rotated["backbone_sink_fraud"].matches("a new password") and rotated["backbone_sink_welfare"] == made["backbone_sink_welfare"]


def test_bad_credentials_and_urls_are_refused_with_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match="users provision"):
        read_credentials(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"users": {}}')
    with pytest.raises(BackboneError, match="not a credentials file"):
        read_credentials(tmp_path / "bad.json")
    with pytest.raises(BackboneError, match="http"):
        with_user("clickhouse-backbone:8123", "u", "p")
    assert Credential.of("pw", "salt").matches("pw")


@pytest.fixture
def credentials_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "credentials.json"
    provision(ddl.sink_workloads("", ["fraud"]), tmp_path / "passwords", path)
    yield path


def test_grants_apply_refuses_credentials_that_miss_a_sink_of_the_charter(backbone_cli, credentials_file: Path) -> None:  # noqa: ANN001
    done = backbone_cli("clickhouse", "grants", "--apply", "--credentials", str(credentials_file),
                        BACKBONE_CLICKHOUSE_DSN="http://backbone:pw@127.0.0.1:9/default", BACKBONE_CLICKHOUSE_DATABASE_PREFIX="")
    assert done.returncode == 1 and "no credential for backbone_sink_research" in done.stderr and "Traceback" not in done.stderr
