"""Agreements as code and the policy engine: pure logic, no I/O.

    charter = load_agreements(settings.agreements_dir, catalog)
    engine = PolicyEngine(charter, Keyring.open(settings))
    for decision in engine.decide(event, consent, now): ...

The agreement models and loader (`agreements`), the charter's rules (`rules`), the field treatments
(`treatments`), what a decision is and the state it reads (`decision`), the compiled engine
(`engine`), the schema of what a recipient receives (`released`), what an agreement change widens
(`diff`), and the names the backbone keeps for itself and how an agency name becomes an identifier
(`names`). Reading agreement changes from Kafka and replaying events is `backbone.control`'s.

May import: backbone.errors, backbone.settings, backbone.events, backbone.keys, backbone.quality.
Never imports: confluent_kafka, aiokafka, faust, aiohttp, requests, clickhouse_connect, chdb.
"""

from __future__ import annotations

from backbone.policy.agreements import Agreement, Charter, FieldTreatment, default_charter, load_agreements
from backbone.policy.decision import REASONS, ConsentRecord, ConsentState, Decision, DictConsent, NoConsent
from backbone.policy.engine import PolicyEngine

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
