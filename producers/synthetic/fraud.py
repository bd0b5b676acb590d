"""The planted fraud kinds and the ground-truth record of each planted case.

The kinds and thresholds are the fraud rules' own (`consumers.fraud.rules`), so the generator plants
exactly what the detector looks for, by import:
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

from consumers.fraud.rules.claim_after_death import KIND as CLAIM_AFTER_DEATH
from consumers.fraud.rules.shared_bank_account import KIND as SHARED_BANK_ACCOUNT
from consumers.fraud.rules.shared_bank_account import MIN_CLAIMANTS as SHARED_ACCOUNT_MIN_CLAIMANTS
from consumers.fraud.rules.undeclared_income import INCOME_THRESHOLD_EUR, MEANS_TESTED
from consumers.fraud.rules.undeclared_income import KIND as UNDECLARED_INCOME

# The kinds this generator plants (a rule registered later is not planted).
FRAUD_KINDS = (UNDECLARED_INCOME, SHARED_BANK_ACCOUNT, CLAIM_AFTER_DEATH)

__all__ = [
    "CLAIM_AFTER_DEATH", "FRAUD_KINDS", "INCOME_THRESHOLD_EUR", "MEANS_TESTED", "SHARED_ACCOUNT_MIN_CLAIMANTS",
    "SHARED_BANK_ACCOUNT", "UNDECLARED_INCOME", "FraudCase", "read_ground_truth", "write_ground_truth",
]


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
