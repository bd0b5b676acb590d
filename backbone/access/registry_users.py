"""Registry users per agency and per backbone component, planned from the catalog and the charter.

Pure: nothing is contacted here. Each user may write (register, look up, set the compatibility of)
exactly the subjects its code registers; every user may read (GET), which is all a recipient, a sink
or ClickHouse (fetching writer schemas for AvroConfluent inserts) needs. User names are the Kafka
principals' (`backbone.access.acls`), so an agency holds one name on both. tests/test_registry_users.py
holds, per workload, the subjects its code registers and checks this plan against them.

- `backbone-init` (`backbone schemas register`): every catalog event's `raw.<event type>-value`;
- `processor`: the shared subjects (`shared.<recipient>.<event type>-value`), `audit.decisions-value`,
  `audit.checkpoints-value` (each batch's signed checkpoint) and `audit.timestamps-value` (with a TSA);
- `sink-<recipient>`: reads only; the fraud recipient's sink registers `alerts.fraud-value`;
- `sink-audit` (the audit sink, `backbone sink --audit-only`): reads only;
- `operator`: admin (`backbone schemas`, and each action's `audit.operations[.checkpoints]-value`);
- a provider: `raw.<provider>.` (its SDK registers its events at start); the consent publisher
  `consent.changes-value`; a recipient only reads (its consumers decode what it is sent).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from backbone.access.acls import Agencies
from backbone.kafka.topics import (
    ALERTS_TOPIC,
    AUDIT_TOPIC,
    CHECKPOINTS_TOPIC,
    CONSENT_TOPIC,
    RAW_PREFIX,
    SHARED_PREFIX,
    TIMESTAMPS_TOPIC,
    raw_prefix,
)
from backbone.policy import names
from backbone.registry.roles import Grant, Role

if TYPE_CHECKING:
    from backbone.policy.agreements import Charter

INIT = "backbone-init"  # the `backbone-` prefix is the backbone's own (names.RESERVED_PREFIXES): no agency takes it
PROCESSOR = names.PROCESSOR
OPERATOR = names.OPERATOR
READ = Grant(Role.READ)


def value_subject(topic: str) -> str:
    """The registry subject of `topic`'s values (Confluent's TopicNameStrategy)."""
    return f"{topic}-value"


def sink_user(recipient: str) -> str:
    return f"{names.SINK_PREFIX}{recipient}"


def workload_users(agencies: Agencies, *, fraud_recipient: str = "fraud") -> dict[str, Grant]:
    """The backbone's own users: what a pod of each workload sends (its Secret `registry-<user>`)."""
    users = {
        INIT: Grant(Role.WRITE, (RAW_PREFIX,)),
        PROCESSOR: Grant(Role.WRITE, (SHARED_PREFIX, *(value_subject(t) for t in (AUDIT_TOPIC, CHECKPOINTS_TOPIC, TIMESTAMPS_TOPIC)))),
        OPERATOR: Grant(Role.ADMIN),
    }
    for recipient in agencies.recipients:
        alerts = recipient == fraud_recipient
        users[sink_user(recipient)] = Grant(Role.WRITE, (value_subject(ALERTS_TOPIC),)) if alerts else READ
    users[sink_user(names.AUDIT)] = READ  # the audit sink: ClickHouse fetches the audit topics' writer schemas
    return users


def agency_users(agencies: Agencies) -> dict[str, Grant]:
    """One user per agency: a provider writes its own raw subjects, the consent publisher its one
    subject, a recipient (which may be a provider too) reads."""
    users: dict[str, Grant] = {name: READ for name in agencies.recipients}
    for provider in agencies.providers:
        users[provider] = Grant(Role.WRITE, (raw_prefix(provider),))
    for publisher in agencies.consent_publishers:
        users[publisher] = Grant(Role.WRITE, (value_subject(CONSENT_TOPIC),))
    return users


def plan(agencies: Agencies, *, fraud_recipient: str = "fraud") -> dict[str, Grant]:
    """Every registry user the deployment needs, by name."""
    return dict(sorted({**agency_users(agencies), **workload_users(agencies, fraud_recipient=fraud_recipient)}.items()))


def plan_for_charter(charter: Charter, *, fraud_recipient: str = "fraud") -> dict[str, Grant]:
    """`plan` for the agencies the catalog and the charter name."""
    return plan(Agencies.from_charter(charter), fraud_recipient=fraud_recipient)
