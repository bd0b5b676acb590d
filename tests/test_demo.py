"""`backbone demo` end to end at a small size: the README's main command, as a user runs it."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.cli import run_backbone

pytestmark = pytest.mark.integration


def run_demo(data_dir: Path, events: int) -> subprocess.CompletedProcess[str]:
    return run_backbone("demo", "--events", str(events), "--timeout", "240", timeout=420,
                        env={"BACKBONE_DATA_DIR": str(data_dir), "BACKBONE_BROKER_PORT": "0", "BACKBONE_SCHEMA_REGISTRY_PORT": "0"})


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_demo_runs_end_to_end_finds_the_planted_fraud_and_stops_everything(tmp_path: Path) -> None:
    result = run_demo(tmp_path, 2500)
    out = result.stdout
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    decided, expected = map(lambda n: int(n.replace(",", "")), re.search(r"Decisions \(([\d,]+) of ([\d,]+) events decided\)", out).groups())
    assert decided == expected > 2000
    assert re.search(r"fraud\s+│\s+permit\s+│\s+[\d,]+", out)
    assert re.search(r"statistics\s+│\s+deny: agreement_inactive", out)  # the draft tax-to-statistics
    for kind in ("claim_after_death", "shared_bank_account", "undeclared_income"):
        row = re.search(kind + r"\s+│\s+(\d+)\s+│\s+(\d+)\s+│\s+(\d+)\s+│\s+(\d+)\s+│\s+([\d.]+)\s+│\s+([\d.]+)", out)
        assert row, f"no score row for {kind}"
        alerts, _, false_pos, missed, precision, recall = row.groups()
        assert int(alerts) > 0 and precision == recall == "1.00" and false_pos == missed == "0"

    assert "consent granted, research claim:   permit" in out
    assert "consent withdrawn, next claim:     consent_withdrawn" in out
    assert "tax-to-fraud suspended, income:    agreement_inactive" in out
    assert "tax-to-fraud reactivated, income:  permit" in out
    assert "SELECT kind, count() FROM fraud.alerts" in out
    # each provider's data-quality scorecard, handed over by the worker as it stopped (issue 32)
    assert "Data quality per provider" in out
    for provider in ("tax", "welfare", "registry"):
        assert re.search(provider + r"\s+│\s+" + provider + r"\.\w+\s+│[^\n]*│\s+completeness\s+│\s+[\d.]+", out), provider

    # the lineage and catalogue written beside the data, and the processor's run events of the suspension it showed
    for kind in ("ropa", "asyncapi", "dcat", "openlineage"):
        assert str(tmp_path / "demo" / "catalog" / kind) in out.replace("\n", ""), kind
    lineage = [json.loads(line) for line in (tmp_path / "demo" / "lineage" / "openlineage.jsonl").read_text().splitlines()]
    assert [e["eventType"] for e in lineage if e["job"]["name"] == "tax-to-fraud@2"] == ["RUNNING", "ABORT", "START"]

    log = (tmp_path / "demo" / "logs" / "processor.log").read_text()
    worker_pid = int(re.search(r" pid=(\d+) ", log).group(1))
    assert not pid_alive(worker_pid), "the processor worker outlived the demo"

    again = run_demo(tmp_path, 300)  # a second run in the same directory starts afresh
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "demo finished" in again.stdout
