"""Each agency's role reads its own database only; the oversight role reads the audit database only."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from consumers.ddl import grants_sql


def _grants(statements: list[str]) -> dict[str, set[str]]:
    granted: dict[str, set[str]] = {}
    for statement in statements:
        match = re.fullmatch(r"GRANT (\w+) ON `([^`]+)`\.\* TO `([^`]+)`", statement)
        if match:
            granted.setdefault(match.group(3), set()).add(f"{match.group(1)} {match.group(2)}")
    return granted


def test_each_agency_role_selects_from_its_own_database_only() -> None:
    statements = grants_sql("", ["fraud", "statistics", "welfare"])
    assert _grants(statements) == {
        "backbone_fraud": {"SELECT fraud"},
        "backbone_statistics": {"SELECT statistics"},
        "backbone_welfare": {"SELECT welfare"},
        "backbone_oversight": {"SELECT audit"},
    }
    # whatever was granted by hand before is revoked before the grant, for every role
    for role in ("backbone_fraud", "backbone_statistics", "backbone_welfare", "backbone_oversight"):
        assert statements.index(f"REVOKE ALL ON *.* FROM `{role}`") < statements.index(
            next(s for s in statements if s.startswith("GRANT") and s.endswith(f"`{role}`")))
        assert f"CREATE ROLE IF NOT EXISTS `{role}`" in statements


def test_database_prefix_applies_to_grants() -> None:
    assert _grants(grants_sql("t1_", ["fraud"]))["backbone_fraud"] == {"SELECT t1_fraud"}


def _backbone(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from app.cli import main; main()", *args],
                          capture_output=True, text=True, env={**os.environ, **env}, timeout=60)


def test_grants_command_prints_sql_for_every_recipient_in_the_charter(tmp_path: Path) -> None:
    done = _backbone("clickhouse", "grants", env={"BACKBONE_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'ch'}"})
    assert done.returncode == 0, done.stderr
    for agency in ("fraud", "statistics", "welfare"):
        assert f"GRANT SELECT ON `{agency}`.* TO `backbone_{agency}`;" in done.stdout
    assert "GRANT SELECT ON `audit`.* TO `backbone_oversight`;" in done.stdout


def test_applying_grants_on_chdb_says_there_are_no_users(tmp_path: Path) -> None:
    done = _backbone("clickhouse", "grants", "--apply", env={"BACKBONE_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'ch'}"})
    assert done.returncode == 1
    assert "chDB has no users or roles" in done.stderr
    assert "Traceback" not in done.stderr
