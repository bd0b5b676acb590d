"""Agreements as code and the policy engine: pure logic, no I/O.

    charter = load_agreements(settings.agreements_dir, catalog)
    engine = PolicyEngine(charter, Keyring.open(settings))
    for decision in engine.decide(event, consent, now): ...
"""

from __future__ import annotations

from backbone.policy.agreements import Agreement, Charter, FieldTreatment, default_charter, load_agreements
from backbone.policy.engine import (
    REASONS,
    ConsentRecord,
    ConsentState,
    Decision,
    DictConsent,
    NoConsent,
    PolicyEngine,
)

__all__ = [
    "REASONS",
    "Agreement",
    "Charter",
    "ConsentRecord",
    "ConsentState",
    "Decision",
    "DictConsent",
    "FieldTreatment",
    "NoConsent",
    "PolicyEngine",
    "default_charter",
    "load_agreements",
]
