"""Governance tags the synthetic agencies put on their events: lawful basis and permitted purposes.

Each agency states, per event type, why it holds the data (GDPR Art. 6 basis) and which purposes
from `schemas/purposes.yaml` it allows the event to be shared for. The demo's agreements in
`agreements/` rely on these purposes being present.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class GovernanceProfile:
    lawful_basis: str
    purposes: tuple[str, ...]

    def tags(self, consent_id: str | None = None, extra_purposes: tuple[str, ...] = ()) -> dict:
        """A fresh `governance` record for one event."""
        return {"lawful_basis": self.lawful_basis, "purposes": [*self.purposes, *extra_purposes], "consent_id": consent_id}


PROFILES: dict[str, GovernanceProfile] = {
    "tax.income_declared": GovernanceProfile(
        "legal_obligation", ("fraud_prevention_and_detection", "official_statistics", "legal_compliance")
    ),
    "welfare.benefit_claimed": GovernanceProfile(
        "public_task", ("fraud_prevention_and_detection", "service_provision", "official_statistics")
    ),
    "registry.address_changed": GovernanceProfile(
        "public_task", ("service_provision", "identity_verification", "fraud_prevention_and_detection", "official_statistics")
    ),
    "registry.death_registered": GovernanceProfile(
        "public_task", ("service_provision", "identity_verification", "fraud_prevention_and_detection", "official_statistics")
    ),
    "police.incident_reported": GovernanceProfile("public_task", ("law_enforcement", "official_statistics")),
    "consent.changed": GovernanceProfile("legal_obligation", ("legal_compliance", "service_provision")),
}

# Purposes a data subject can grant or withdraw consent for in the synthetic data.
CONSENT_PURPOSES = ("scientific_research", "personalised_service")
# A claimant who consented to research has claims also tagged for it, with the consent reference.
RESEARCH_PURPOSE = "scientific_research"
