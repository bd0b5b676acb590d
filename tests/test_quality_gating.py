"""Fraud precision and recall with the quality gate on and off under planted defects (issue 32):
the same stream, the router and the fraud rules' SQL run twice (`app.quality_gating`)."""

from __future__ import annotations

import pytest

from app.quality_gating import run
from backbone.events.catalog import load_catalog
from backbone.policy.agreements import load_agreements
from backbone.settings import PROJECT_ROOT, Settings


@pytest.fixture(scope="module")
def runs(clickhouse_client) -> dict[bool, object]:  # noqa: ANN001
    charter = load_agreements(PROJECT_ROOT / "agreements", load_catalog(PROJECT_ROOT / "schemas"))
    return {gated: run(clickhouse_client, Settings(), charter, gated, events=6_000, hours=4, burst_hour=1) for gated in (False, True)}


def test_the_gate_holds_the_failing_hours_own_records_and_the_scores_say_what_it_cost(runs: dict) -> None:
    off, on = runs[False], runs[True]
    assert off.held == 0 and on.held > 0 and on.breaches >= 1
    # only the provider whose window broke the bar lost records; every record is either shared or held
    assert on.shared["welfare.benefit_claimed"] == off.shared["welfare.benefit_claimed"]
    assert on.shared["tax.income_declared"] + on.held == off.shared["tax.income_declared"]
    assert off.alerts > 0 and 0 < on.recall <= off.recall <= 1 and on.precision > 0
    kinds = {s.kind: s for s in on.scores}
    assert kinds["undeclared_income"].false_negatives >= {s.kind: s for s in off.scores}["undeclared_income"].false_negatives
    assert sum(s.true_positives + s.false_negatives for s in on.scores) == sum(s.true_positives + s.false_negatives for s in off.scores)
