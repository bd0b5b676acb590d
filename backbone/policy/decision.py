"""What a policy decision is and what it reads besides the event: the reason codes (in the order
`backbone.policy.engine` checks them), the `Decision`, and the consent and erasure state a decision
looks up (protocols, with the dict-backed and empty versions tests and replays use). Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

ERASED = "erased"
NO_AGREEMENT = "no_agreement"
AGREEMENT_INACTIVE = "agreement_inactive"
PURPOSE_NOT_PERMITTED = "purpose_not_permitted"
BASIS_MISMATCH = "basis_mismatch"
CONSENT_MISSING = "consent_missing"
CONSENT_WITHDRAWN = "consent_withdrawn"
CONDITION_FALSE = "condition_false"
# Not the engine's: the processor holds a permitted record back when the provider's last closed
# quality window is below a bar its agreement requires (`require_quality`, `on_quality_breach: hold`).
QUALITY_BREACH = "quality_breach"
# Not the engine's either: a permit of such an agreement waits for its own quality window to close
# (nothing disclosed yet); the release is audited when the window is judged (processors.quality_gate).
QUALITY_PENDING = "quality_pending"
REASONS: tuple[str, ...] = (  # in the order of the checks above
    ERASED,
    NO_AGREEMENT,
    AGREEMENT_INACTIVE,
    PURPOSE_NOT_PERMITTED,
    BASIS_MISMATCH,
    CONSENT_MISSING,
    CONSENT_WITHDRAWN,
    CONDITION_FALSE,
)


@dataclass(slots=True, frozen=True)
class Decision:
    """The outcome for one (event, recipient). `record` and `released_fields` only on permit."""

    recipient: str
    agreement_id: str | None
    agreement_version: int | None
    permitted: bool
    reason: str | None  # None when permitted, else exactly one of REASONS
    record: dict | None
    released_fields: tuple[str, ...]
    purposes: tuple[str, ...]
    key_ids: tuple[str, ...]
    # On permit: the Kafka key of the released record, the subject's pseudonym in the agreement's
    # sharing domain (None when the agreement has no domain or the event no subject). Never the
    # raw topic key, which every producer can recompute.
    key: str | None = None


@dataclass(slots=True, frozen=True)
class ConsentRecord:
    """The latest consent change of one subject for one purpose."""

    status: Literal["granted", "withdrawn"]
    at: datetime


class ConsentState(Protocol):
    """Consent look-up by the raw subject id (the event's subject field) and purpose."""

    def get(self, subject: str, purpose: str) -> ConsentRecord | None: ...


class NoConsent:
    """A consent state with no records: every consent-based agreement denies `consent_missing`."""

    def get(self, subject: str, purpose: str) -> ConsentRecord | None:
        return None


class DictConsent:
    """Consent records in a dict keyed by (subject, purpose); the processor's table works alike."""

    def __init__(self, records: Mapping[tuple[str, str], ConsentRecord] | None = None) -> None:
        self.records: dict[tuple[str, str], ConsentRecord] = dict(records or {})

    def get(self, subject: str, purpose: str) -> ConsentRecord | None:
        return self.records.get((subject, purpose))

    def set(self, subject: str, purpose: str, status: Literal["granted", "withdrawn"], at: datetime) -> None:
        self.records[(subject, purpose)] = ConsentRecord(status, at)


class ErasureState(Protocol):
    """Whether a subject (the raw id in the event's subject field) has been erased."""

    def erased(self, subject: str) -> bool: ...


class NoErasures:
    """No subject is erased (the engine's default; the processor passes its erasure table)."""

    def erased(self, subject: str) -> bool:
        return False


class DictErasures:
    """Erased subjects in a set of raw ids, for tests and replays; the processor's table matches
    oversight tokens instead and never holds a raw id."""

    def __init__(self, subjects: set[str] | None = None) -> None:
        self.subjects = set(subjects or ())

    def erased(self, subject: str) -> bool:
        return (subject if isinstance(subject, str) else str(subject)) in self.subjects
