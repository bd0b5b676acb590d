"""The operator's audit trail: every control-plane action (re-identification, agreement status
change, erasure, DLQ replay) is a record on `audit.operations`, landed beside the decisions in the
audit database.

`record()` publishes synchronously and raises when the cluster does not acknowledge it, so an
action that must be accounted for (a re-identification) can refuse to complete without its record.
Actions name their actor by `BACKBONE_IDENTITY`, never by `$USER`, and carry no personal data:
a token appears only as its SHA-256.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from confluent_kafka import KafkaError, Message, Producer

from backbone.catalog import OPERATOR_ACTION, load_catalog
from backbone.errors import BackboneError, KafkaUnavailableError
from backbone.serde import encoder_for, registry_client
from backbone.settings import Settings
from backbone.topics import OPERATIONS_TOPIC, Topics

ACTIONS = ("reidentify", "agreement_status", "agreement_apply", "erase", "dlq_replay")
IDENTITY_HELP = "set BACKBONE_IDENTITY to your operator or oversight account (it is recorded with the action)"


class IdentityMissing(BackboneError):
    """An action that must name its actor was attempted without `BACKBONE_IDENTITY`."""


@dataclass(slots=True, frozen=True)
class OperatorAction:
    action: str
    actor: str
    target: str
    outcome: str
    reason: str | None = None
    details: dict[str, str] = field(default_factory=dict)
    action_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


def actor(settings: Settings) -> str:
    """The configured identity; `IdentityMissing` naming the setting when there is none."""
    if not settings.identity:
        raise IdentityMissing(f"no identity to record the action under; {IDENTITY_HELP}")
    return settings.identity


def token_digest(token: str) -> str:
    """SHA-256 of a token, hex: recorded instead of the token, so the trail shows which one without holding it."""
    return hashlib.sha256(token.encode()).hexdigest()


def record(settings: Settings, action: OperatorAction) -> OperatorAction:
    """Publish `action` to `audit.operations` and wait for the cluster to acknowledge it."""
    if action.action not in ACTIONS:
        raise ValueError(f"unknown operator action {action.action!r}; one of {', '.join(ACTIONS)}")
    Topics(settings).ensure(OPERATIONS_TOPIC)
    schema = load_catalog(settings.schemas_dir).internal_schema(OPERATOR_ACTION)
    encode = encoder_for(registry_client(settings), f"{OPERATIONS_TOPIC}-value", schema)
    value = encode({
        "action_id": action.action_id, "action": action.action, "actor": action.actor, "at": action.at,
        "target": action.target, "outcome": action.outcome, "reason": action.reason, "details": dict(action.details),
    })
    producer = Producer(settings.producer_config(**{"linger.ms": 0}))
    failures: list[str] = []

    def delivered(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            failures.append(error.str())

    producer.produce(OPERATIONS_TOPIC, value, action.action_id.encode(), on_delivery=delivered)
    if producer.flush(settings.kafka_timeout_s) or failures:
        raise KafkaUnavailableError(
            f"the {action.action} record was not acknowledged by {OPERATIONS_TOPIC} at {settings.kafka_bootstrap}"
            f"{' (' + failures[0] + ')' if failures else ''}; the action is not done"
        )
    return action
