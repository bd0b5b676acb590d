"""Ground-truth scoring: how the fraud alerts compare with the cases the synthetic generator planted.

The generator's ground truth holds raw national ids and the alerts hold fraud-domain pseudonyms,
so the caller passes the pseudonymise function of the fraud sharing domain.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from consumers.fraud import RULES, Alert
from producers.synthetic.fraud import FraudCase


@dataclass(slots=True, frozen=True)
class Score:
    kind: str
    true_positives: int
    false_positives: int
    false_negatives: int

    @property
    def precision(self) -> float:
        found = self.true_positives + self.false_positives
        return self.true_positives / found if found else 1.0

    @property
    def recall(self) -> float:
        planted = self.true_positives + self.false_negatives
        return self.true_positives / planted if planted else 1.0


def score(alerts: Iterable[Alert], truth: Iterable[FraudCase], pseudonymise: Callable[[str], str]) -> list[Score]:
    """Precision and recall per kind (every registered kind, and any kind found or planted)."""
    found = {alert.key for alert in alerts}
    planted = {(case.kind, pseudonymise(case.national_id), case.period) for case in truth}
    scores = []
    for kind in sorted({k for k, _, _ in found | planted} | set(RULES)):
        mine = {key for key in found if key[0] == kind}
        real = {key for key in planted if key[0] == kind}
        scores.append(Score(kind, len(mine & real), len(mine - real), len(real - mine)))
    return scores
