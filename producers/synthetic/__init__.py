"""Seeded synthetic agency data with planted fraud and its ground truth."""

from __future__ import annotations

from producers.synthetic.fraud import (
    CLAIM_AFTER_DEATH,
    FRAUD_KINDS,
    INCOME_THRESHOLD_EUR,
    MEANS_TESTED,
    SHARED_ACCOUNT_MIN_CLAIMANTS,
    SHARED_BANK_ACCOUNT,
    UNDECLARED_INCOME,
    FraudCase,
    read_ground_truth,
    write_ground_truth,
)
from producers.synthetic.stream import AGENCIES, EVENT_TYPES, SyntheticStream, generate

__all__ = [
    "AGENCIES", "CLAIM_AFTER_DEATH", "EVENT_TYPES", "FRAUD_KINDS", "INCOME_THRESHOLD_EUR", "MEANS_TESTED",
    "SHARED_ACCOUNT_MIN_CLAIMANTS", "SHARED_BANK_ACCOUNT", "UNDECLARED_INCOME", "FraudCase", "SyntheticStream",
    "generate", "read_ground_truth", "write_ground_truth",
]
