"""ClickHouse least privilege: each sink's user writes its own database only, each recipient's role
reads its agreement views only, and the oversight role alone reads the audit database.

chDB has no users or grants, so these read the generated statements (and have chDB parse every one);
with `BACKBONE_TEST_CLICKHOUSE_URL` (an admin DSN of a ClickHouse server) one test runs them for real.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from app.cli.clickhouse import sink_passwords
from backbone.errors import BackboneError
from backbone.events.catalog import load_catalog
from backbone.policy import names
from backbone.policy.agreements import load_agreements
from backbone.settings import PROJECT_ROOT, load_settings
from consumers import ddl
from consumers.plans import recipient_plan
from consumers.typemap import Column
from tests.cli import run_backbone

GRANT = re.compile(r"GRANT (?P<privileges>[A-Z ,]+) ON `(?P<database>[^`]+)`\.(?P<object>\*|`[^`]+`) TO `(?P<grantee>[^`]+)`")


@pytest.fixture(scope="module")
def charter():  # noqa: ANN201 - backbone.policy.agreements.Charter
    return load_agreements(PROJECT_ROOT / "agreements", load_catalog(PROJECT_ROOT / "schemas"))


@pytest.fixture(scope="module")
def views(charter) -> dict[str, list[str]]:  # noqa: ANN001
    return {r: ddl.agreement_views(charter, r) for r in sorted({a.recipient for a in charter.agreements})}


def _grants(statements: list[str]) -> list[tuple[str, set[str], str, str]]:
    """(grantee, privileges, database, object: `*` or a table/view name) of every GRANT; any other GRANT fails."""
    found = []
    for statement in statements:
        if statement.startswith("GRANT"):
            match = GRANT.fullmatch(statement)
            assert match, statement
            found.append((match["grantee"], {p.strip() for p in match["privileges"].split(",")}, match["database"], match["object"].strip("`")))
    return found


def test_granted_views_are_the_views_the_sink_creates(charter, views) -> None:  # noqa: ANN001
    settings = load_settings(clickhouse_database_prefix="")
    for recipient, viewed in views.items():
        created = [re.match(r"CREATE OR REPLACE VIEW `[^`]+`\.`([^`]+)`", sql)[1] for sql in recipient_plan(settings, charter, recipient).views]
        assert viewed == created


def test_a_recipient_role_selects_its_agreement_views_only(charter, views) -> None:  # noqa: ANN001
    statements = ddl.grants_sql("", views)
    for recipient in views:
        tables = {ddl.table_name(t) for a in charter.agreements if a.recipient == recipient for t in a.event_types}
        granted = [g for g in _grants(statements) if g[0] == ddl.role_name("", recipient)]
        assert {(database, name) for _, _, database, name in granted} == {(recipient, view) for view in views[recipient]}
        assert all(privileges == {"SELECT"} for _, privileges, _, _ in granted)
        assert not {name for _, _, _, name in granted} & (tables | {"*", *names.RESERVED_TABLES})


def test_each_sink_user_is_granted_on_its_own_database_only(views) -> None:  # noqa: ANN001
    granted = _grants(ddl.grants_sql("t1_", views))
    for sink in [*views, ddl.AUDIT_DATABASE]:
        mine = [g for g in granted if g[0] == ddl.sink_user("t1_", sink)]
        own = [(f"t1_{sink}", "*")] + ([("t1_quality", "*")] if sink == ddl.AUDIT_DATABASE else [])  # the audit sink lands quality too
        assert [(database, name) for _, _, database, name in mine] == own
        assert {"CREATE DATABASE", "CREATE TABLE", "ALTER ADD COLUMN", "INSERT"} <= mine[0][1]
    assert not any(privileges & {"ALL", "DROP TABLE", "DROP DATABASE", "ALTER DELETE", "TRUNCATE"} for _, privileges, _, _ in granted)


def test_a_recipient_sink_creates_its_views_and_they_run_as_it(views) -> None:  # noqa: ANN001
    statements = ddl.grants_sql("", views)
    fraud = next(g for g in _grants(statements) if g[0] == "backbone_sink_fraud")
    assert {"CREATE VIEW", "DROP VIEW", "SELECT"} <= fraud[1]  # CREATE OR REPLACE VIEW needs DROP VIEW; views read its tables
    for statement in statements:
        if statement.startswith(("CREATE USER", "ALTER USER")):
            assert statement.endswith("SETTINGS default_normal_view_sql_security = 'DEFINER'")


def test_the_fraud_sink_user_may_create_fill_and_read_the_alerts_tables(views) -> None:  # noqa: ANN001
    (_, privileges, database, name), = [g for g in _grants(ddl.grants_sql("", views)) if g[0] == "backbone_sink_fraud"]
    assert (database, name) == ("fraud", "*")  # fraud.alerts and fraud.alerts_published included
    assert {"CREATE TABLE", "INSERT", "SELECT"} <= privileges


def test_the_oversight_role_alone_reads_the_audit_database(views) -> None:  # noqa: ANN001
    readers = {grantee for grantee, privileges, database, _ in _grants(ddl.grants_sql("", views))
               if database == ddl.AUDIT_DATABASE and "SELECT" in privileges}
    # among the roles people hold, oversight alone; the audit sink's user lands the trail and defines
    # audit.decisions over audit.events, which runs as it (SQL SECURITY DEFINER)
    assert readers == {ddl.role_name("", ddl.OVERSIGHT_ROLE), ddl.sink_user("", ddl.AUDIT_DATABASE)}


def test_reapplying_revokes_every_privilege_before_granting(views) -> None:  # noqa: ANN001
    statements = ddl.grants_sql("", views)
    grantees = {grantee for grantee, _, _, _ in _grants(statements)}
    assert grantees == {*(ddl.role_name("", r) for r in views), "backbone_oversight", *ddl.sink_users("", views)}
    for grantee in grantees:
        revoke = statements.index(f"REVOKE ALL ON *.* FROM `{grantee}`")
        created = next(i for i, s in enumerate(statements) if s.startswith(("CREATE USER IF NOT EXISTS", "CREATE ROLE IF NOT EXISTS"))
                       and f"`{grantee}`" in s)
        grants = [i for i, s in enumerate(statements) if s.startswith("GRANT") and s.endswith(f"`{grantee}`")]
        assert created < revoke < min(grants)


def test_statements_carry_hashes_never_passwords(views) -> None:  # noqa: ANN001
    credential = ddl.Credential.of("correct horse battery", "5a17")
    statements = ddl.grants_sql("", views, {"backbone_sink_fraud": credential})
    text = "\n".join(statements)
    assert "correct horse battery" not in text
    assert f"IDENTIFIED WITH sha256_hash BY '{credential.sha256_hex}' SALT '5a17'" in text
    # a user without a credential gets a placeholder no server takes for a hash
    assert f"`backbone_sink_audit` IDENTIFIED WITH sha256_hash BY '{ddl.NO_CREDENTIAL.sha256_hex}'" in text


def test_every_statement_parses(views, clickhouse_client) -> None:  # noqa: ANN001 - the session's chDB (one per process)
    for statement in ddl.grants_sql("t1_", views, {"backbone_sink_t1_fraud": ddl.Credential.of("p'w\\", "s'")}):
        clickhouse_client.command(f"EXPLAIN AST {statement}")


def test_the_database_prefix_applies_to_databases_users_and_roles(views) -> None:  # noqa: ANN001
    granted = _grants(ddl.grants_sql("t1_", views))
    assert {database for _, _, database, _ in granted} == {f"t1_{r}" for r in views} | {"t1_audit", "t1_quality"}
    assert {grantee for grantee, _, _, _ in granted} == {*(f"backbone_t1_{r}" for r in views), "backbone_t1_oversight",
                                                         *(f"backbone_sink_t1_{r}" for r in views), "backbone_sink_t1_audit"}


def test_passwords_are_generated_into_a_file_only_its_owner_reads(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "passwords.json"
    first = sink_passwords(path, ["backbone_sink_fraud"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(first["backbone_sink_fraud"]) >= 24
    again = sink_passwords(path, ["backbone_sink_fraud", "backbone_sink_audit"])
    assert again["backbone_sink_fraud"] == first["backbone_sink_fraud"] and set(again) == {"backbone_sink_fraud", "backbone_sink_audit"}
    path.chmod(0o644)
    with pytest.raises(BackboneError, match="chmod 600"):
        sink_passwords(path, ["backbone_sink_fraud"])


def _backbone(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run_backbone(*args, env=env, timeout=60)


def test_grants_command_prints_sql_for_every_recipient_in_the_charter(tmp_path: Path, views) -> None:  # noqa: ANN001
    done = _backbone("clickhouse", "grants", env={"BACKBONE_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'ch'}",
                                                  "BACKBONE_CLICKHOUSE_DATABASE_PREFIX": "", "COLUMNS": "400"})
    assert done.returncode == 0, done.stderr
    for recipient in ("fraud", "statistics", "welfare", "research"):
        assert f"GRANT SELECT ON `{recipient}`.`{views[recipient][0]}` TO `backbone_{recipient}`;" in done.stdout
    assert "GRANT SELECT ON `audit`.* TO `backbone_oversight`;" in done.stdout
    assert ("GRANT CREATE DATABASE, CREATE TABLE, ALTER ADD COLUMN, INSERT, CREATE VIEW, DROP VIEW, SELECT ON `audit`.* "
            "TO `backbone_sink_audit`;") in done.stdout


def test_applying_grants_on_chdb_says_there_are_no_users(tmp_path: Path) -> None:
    done = _backbone("clickhouse", "grants", "--apply", env={"BACKBONE_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'ch'}"})
    assert done.returncode == 1
    assert "chDB has no users or roles" in done.stderr
    assert "Traceback" not in done.stderr


SERVER = os.environ.get("BACKBONE_TEST_CLICKHOUSE_URL")


def _as(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, f"{user}:{password}@{parts.hostname}:{parts.port or 8123}", "/default", "", ""))


@pytest.mark.skipif(not SERVER, reason="set BACKBONE_TEST_CLICKHOUSE_URL to an admin DSN of a ClickHouse server")
def test_on_a_server_a_recipient_reads_its_view_and_is_refused_the_raw_table() -> None:
    from clickhouse_connect.driver.exceptions import DatabaseError

    from backbone.clickhouse.client import make_client

    prefix = f"t{uuid.uuid4().hex[:8]}_"
    database, table, view = ddl.database_name(prefix, "fraud"), "tax_income_declared", "tax_to_fraud"
    passwords = {user: uuid.uuid4().hex for user in ddl.sink_users(prefix, ["fraud"])}
    analyst, analyst_password = f"{prefix}analyst", uuid.uuid4().hex
    admin = make_client(SERVER)
    try:
        statements = ddl.grants_sql(prefix, {"fraud": [view]}, {u: ddl.Credential.of(p, uuid.uuid4().hex) for u, p in passwords.items()})
        for statement in statements * 2:  # applying twice is the same as once
            admin.command(statement)
        admin.command(f"CREATE USER {analyst} IDENTIFIED WITH sha256_password BY '{analyst_password}'")
        admin.command(f"GRANT `{ddl.role_name(prefix, 'fraud')}` TO {analyst}")
        sink = make_client(_as(SERVER, ddl.sink_user(prefix, "fraud"), passwords[ddl.sink_user(prefix, "fraud")]))
        sink.command(ddl.create_database_sql(database))
        sink.command(ddl.create_table_sql(database, table, [Column("event_id", "String"), Column("income", "Float64")], ["event_id"], 30))
        sink.command(ddl.create_view_sql(database, view, table, ["event_id"]))
        sink.command(f"INSERT INTO {ddl.qualified(database, table)} (event_id, income) VALUES ('e1', 1234.5)")
        with pytest.raises(DatabaseError):
            sink.command(f"CREATE DATABASE {prefix}elsewhere")
        reader = make_client(_as(SERVER, analyst, analyst_password))
        assert reader.query(f"SELECT event_id FROM {ddl.qualified(database, view)}").result_rows == [("e1",)]
        with pytest.raises(DatabaseError, match="ACCESS_DENIED|Not enough privileges"):
            reader.query(f"SELECT income FROM {ddl.qualified(database, table)}")
        with pytest.raises(DatabaseError):  # refused, whether or not the audit table exists yet
            reader.query(f"SELECT count() FROM {ddl.qualified(ddl.database_name(prefix, ddl.AUDIT_DATABASE), ddl.AUDIT_TABLE)}")
    finally:
        for statement in (f"DROP DATABASE IF EXISTS {database}", f"DROP USER IF EXISTS {analyst}",
                          *(f"DROP USER IF EXISTS `{user}`" for user in passwords),
                          f"DROP ROLE IF EXISTS `{ddl.role_name(prefix, 'fraud')}`", f"DROP ROLE IF EXISTS `{ddl.role_name(prefix, 'oversight')}`"):
            admin.command(statement)
        admin.close()
