"""Fraud detection on the fraud team's pseudonymised data: a registry of SQL rules (`registry`,
one module per rule in `rules/`) and the detector that runs them and publishes alerts (`detector`).

Importing the rules (as the synthetic generator does, for their kinds and thresholds) loads no
Kafka or ClickHouse client: the detector is imported on first use of its names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from consumers.fraud import rules as _rules  # noqa: F401 - importing it registers the built-in rules
from consumers.fraud.alerts import Alert
from consumers.fraud.errors import DuplicateRule, FraudRuleError, UnknownRule
from consumers.fraud.registry import RULES, Rule, applicable, lookup, register, registered, unregister
from consumers.fraud.rules.claim_after_death import death_period_sql

if TYPE_CHECKING:
    from consumers.fraud.detector import BackgroundDetection, FraudDetector

__all__ = [
    "RULES", "Alert", "BackgroundDetection", "DuplicateRule", "FraudDetector", "FraudRuleError", "Rule", "UnknownRule",
    "applicable", "death_period_sql", "lookup", "register", "registered", "unregister",
]


def __getattr__(name: str) -> Any:
    if name in {"FraudDetector", "BackgroundDetection"}:
        from consumers.fraud import detector

        return getattr(detector, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
