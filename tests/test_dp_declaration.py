"""`dp_release:` in agreements: what the loader refuses, and what `agreements diff` calls widening."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from backbone.events.catalog import default_catalog
from backbone.policy.agreements import Agreement, load_agreements, to_yaml
from backbone.policy.diff import NARROWING, WIDENING, diff
from backbone.policy.rules import check_agreement
from backbone.settings import PROJECT_ROOT

CATALOG = default_catalog()
CHARTER = load_agreements(PROJECT_ROOT / "agreements", CATALOG)
SOURCE = "welfare-to-fraud"


def release_data() -> dict:
    return yaml.safe_load(to_yaml(CHARTER.get(SOURCE)))


def build(edit: Callable[[dict], Any]) -> Agreement:
    data = release_data()
    edit(data["dp_release"])
    return Agreement.model_validate(data)


def problems(edit: Callable[[dict], Any]) -> list[str]:
    return check_agreement(build(edit), CATALOG, "agreements/x.yaml")


def query(release: dict) -> dict:
    return release["queries"][0]


def test_the_demo_charter_declares_a_valid_release_of_claims_per_region() -> None:
    release = CHARTER.get(SOURCE).dp_release
    assert release is not None and release.queries[0].cell_count() == 90
    assert check_agreement(CHARTER.get(SOURCE), CATALOG, "x") == []


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda r: r["privacy_unit"].update(pseudonym="period"), "privacy_unit.pseudonym: period must be a field this agreement pseudonymises"),
    (lambda r: r["privacy_unit"].pop("per"), "budgets renew per window only when windows are disjoint in the privacy unit"),
    (lambda r: query(r)["group_by"][0].update(column="bank_account"), "bank_account identifies (pseudonymise, PII)"),
    (lambda r: query(r)["group_by"][0].update(column="date_of_birth"), "date_of_birth is not landed under this agreement"),
    (lambda r: query(r)["group_by"][0].update(prefix=5), "postcode lands as its first 4 characters; a prefix of 5 is not there"),
    (lambda r: query(r)["group_by"][0].update(values=[]), "declare the cells"),
    (lambda r: query(r).update(mechanism="gaussian"), "the gaussian mechanism is accounted in {rho} or {epsilon, delta}"),
    (lambda r: query(r).update(cost={"epsilon": 2.5}), "exceeds a budget or the population cap"),
    (lambda r: query(r).update(statistic="sum"), "a sum needs the numeric field"),
    (lambda r: query(r).update(statistic="sum", field="monthly_amount"), "a sum needs bounds [lower, upper]"),
    (lambda r: query(r).update(statistic="mean", field="national_id", bounds=[0, 1]), "national_id must be landed as kept"),
    (lambda r: r["budgets"].append({"recipient": "research", "purpose": "astrology", "epsilon": 1}), "unknown purpose 'astrology'"),
    (lambda r: r["budgets"][0].update(epsilon=9), "exceeds the population cap"),
    (lambda r: r["budgets"][0].update(epsilon=None, rho=0.5), "must use one accounting"),
    (lambda r: r["invariants"].append("exact_counts"), "unknown invariant 'exact_counts'"),
    (lambda r: query(r).update(statistic="quantile", field="monthly_amount", bounds=[0, 1], quantile=0.5, mechanism="gaussian",
                               cost={"epsilon": 1, "delta": 1e-9}), "a quantile is accounted in {epsilon} (laplace) or {rho}"),
], ids=["unit not a pseudonym", "windows renewing by calendar", "identifying group", "group not landed", "prefix finer than landed",
        "cells read from data", "mechanism against accounting", "cost over budget", "sum without field", "sum without bounds",
        "mean of a pseudonym", "unknown purpose", "budget over cap", "mixed accounting", "unknown invariant",
        "quantile with delta"])
def test_the_loader_refuses_an_unsafe_release_saying_what_to_fix(edit: Callable[[dict], Any], expected: str) -> None:
    found = problems(edit)
    assert any(expected in p for p in found), found
    assert all(p.startswith("agreement welfare-to-fraud@1 in agreements/x.yaml: field dp_release") for p in found), found


def test_a_budget_that_is_neither_epsilon_nor_rho_is_refused_by_the_model() -> None:
    data = release_data()
    data["dp_release"]["budgets"][0] = {"recipient": "statistics", "purpose": "official_statistics"}
    with pytest.raises(ValueError, match="give epsilon"):
        Agreement.model_validate(data)


def dp_rows(edit: Callable[[dict], Any]) -> list:
    return [c for c in diff(CHARTER.get(SOURCE), build(edit), CATALOG) if c.kind == "dp_release"]


@pytest.mark.parametrize(("edit", "reason"), [
    (lambda r: r["budgets"][0].update(epsilon=2.5), "budget for official_statistics raised (epsilon)"),
    (lambda r: r["population_cap"].update(epsilon=4), "population cap raised (epsilon)"),
    (lambda r: query(r)["contributions"].update(max_rows_per_group=5), "looser contribution bound"),
    (lambda r: r["queries"].append({**query(r), "name": "claims_again"}), "new query claims_again"),
    (lambda r: query(r).update(cost={"epsilon": 1.5}), "cost per release raised"),
    (lambda r: r["invariants"].append("population_total"), "new invariant population_total"),
    (lambda r: r["budgets"].append({"recipient": "research", "purpose": "scientific_research", "epsilon": 1}), "new budget: research"),
    (lambda r: query(r)["group_by"][0].update(prefix=3, values={"range": [100, 999]}), "other cells"),
], ids=["larger budget", "larger cap", "looser bound", "new query", "dearer release", "new invariant", "new recipient", "finer cells"])
def test_agreements_diff_calls_a_larger_budget_a_looser_bound_or_a_new_query_widening(edit: Callable[[dict], Any], reason: str) -> None:
    rows = dp_rows(edit)
    assert rows and all(r.classification == WIDENING for r in rows), rows
    assert any(reason in r.reason for r in rows), rows


def test_agreements_diff_calls_a_smaller_budget_or_a_tighter_bound_narrowing() -> None:
    def tighter(r: dict) -> None:
        r["budgets"][0]["epsilon"] = 1.5
        query(r)["contributions"]["max_rows_per_group"] = 1
    rows = dp_rows(tighter)
    assert rows and all(r.classification == NARROWING for r in rows), rows


def test_declaring_a_release_where_there_was_none_widens_for_each_recipient() -> None:
    data = release_data()
    data.pop("dp_release")
    rows = [c for c in diff(Agreement.model_validate(data), CHARTER.get(SOURCE), CATALOG) if c.kind == "dp_release"]
    assert [(r.recipient, r.classification) for r in rows] == [("statistics", WIDENING)]


def test_agreements_diff_on_the_command_line_exits_1_for_a_larger_budget(backbone_cli, tmp_path) -> None:  # noqa: ANN001
    data = release_data()
    data["dp_release"]["budgets"][0]["epsilon"] = 2.5
    new = tmp_path / "new.yaml"
    new.write_text(yaml.safe_dump(data, sort_keys=False))
    result = backbone_cli("agreements", "diff", str(PROJECT_ROOT / "agreements" / "welfare_to_fraud.yaml"), str(new), "--format", "json")
    assert result.returncode == 1, result.stderr
    (change,) = json.loads(result.stdout)["changes"]
    assert (change["recipient"], change["kind"], change["classification"]) == ("statistics", "dp_release", "widening")
