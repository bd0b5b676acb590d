"""The planted fraud kinds, their thresholds, and the ground-truth record of each planted case.

Rules a detector is expected to find (and honest people never match, by construction):
- `undeclared_income`: a means-tested benefit claimed for a period in which the person's declared
  income (sum of `tax.income_declared` for that person and period) exceeds `INCOME_THRESHOLD_EUR`.
- `shared_bank_account`: one bank account receives benefit claims of `SHARED_ACCOUNT_MIN_CLAIMANTS`
  or more distinct claimants in the same period.
- `claim_after_death`: a benefit claimed for a period after the month of a registered death.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

UNDECLARED_INCOME = "undeclared_income"
SHARED_BANK_ACCOUNT = "shared_bank_account"
CLAIM_AFTER_DEATH = "claim_after_death"
FRAUD_KINDS = (UNDECLARED_INCOME, SHARED_BANK_ACCOUNT, CLAIM_AFTER_DEATH)

# Monthly declared income above which means-tested benefits are not due (EUR per month).
INCOME_THRESHOLD_EUR = 2_500.0
SHARED_ACCOUNT_MIN_CLAIMANTS = 3
MEANS_TESTED = frozenset({"income_support", "housing_allowance", "unemployment"})


@dataclass(slots=True, frozen=True)
class FraudCase:
    """One planted case: `kind` by `national_id` in `period` (YYYY-MM), visible in the generated events."""

    kind: str
    national_id: str
    period: str
    details: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.national_id, self.period)


def write_ground_truth(path: Path, cases: Iterable[FraudCase]) -> int:
    """Write the cases as a JSON list of {kind, national_id, period, details}; returns the count."""
    rows = [asdict(case) for case in cases]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
    return len(rows)


def read_ground_truth(path: Path) -> list[FraudCase]:
    return [FraudCase(**row) for row in json.loads(path.read_text())]
