"""What an agreement is in the words other tools read: its hash, the GDPR article and DPV concept of
its lawful basis, the DPV IRI of each purpose, and the time resolution its recipient gets."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from backbone.events.catalog import Catalog
from backbone.policy.agreements import Agreement

DPV = "https://w3id.org/dpv#"
GDPR_DPV = "https://w3id.org/dpv/legal/eu/gdpr#"
GDPR_ELI = "http://data.europa.eu/eli/reg/2016/679/oj"


@dataclass(frozen=True, slots=True)
class Basis:
    """A GDPR Art. 6(1) lawful basis: its point, its words, and its DPV concepts."""

    id: str
    article: str
    label: str
    dpv: str
    gdpr_dpv: str


LAWFUL_BASES: dict[str, Basis] = {
    basis.id: basis for basis in (
        Basis("consent", "GDPR Art. 6(1)(a)", "consent of the data subject", f"{DPV}Consent", f"{GDPR_DPV}A6-1-a"),
        Basis("contract", "GDPR Art. 6(1)(b)", "performance of a contract", f"{DPV}Contract", f"{GDPR_DPV}A6-1-b"),
        Basis("legal_obligation", "GDPR Art. 6(1)(c)", "compliance with a legal obligation", f"{DPV}LegalObligation",
              f"{GDPR_DPV}A6-1-c"),
        Basis("vital_interests", "GDPR Art. 6(1)(d)", "protection of vital interests", f"{DPV}VitalInterest", f"{GDPR_DPV}A6-1-d"),
        Basis("public_task", "GDPR Art. 6(1)(e)", "a task in the public interest or in the exercise of official authority",
              f"{DPV}OfficialAuthorityOfController", f"{GDPR_DPV}A6-1-e"),
        Basis("legitimate_interests", "GDPR Art. 6(1)(f)", "legitimate interests", f"{DPV}LegitimateInterest", f"{GDPR_DPV}A6-1-f"),
    )
}

# `occurred_at`'s generalisation -> the ISO 8601 duration a recipient can tell events apart by
RESOLUTIONS = {"keep": "PT0.001S", "hour": "PT1H", "day": "P1D", "month": "P1M", "year": "P1Y"}


def agreement_hash(agreement: Agreement) -> str:
    """SHA-256 of the agreement version's terms (everything but its status), hex: the same text gives
    the same hash whoever computes it, and a suspension does not change it."""
    terms = agreement.model_dump(mode="json", exclude={"status"})
    terms["fields"] = {name: treatment.to_yaml() for name, treatment in agreement.fields.items()}
    return hashlib.sha256(json.dumps(terms, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def purpose_iri(catalog: Catalog, purpose: str) -> str:
    """The DPV IRI of a purpose of the vocabulary (`dpv:ScientificResearch` -> its full IRI)."""
    dpv = catalog.purposes[purpose].dpv
    return f"{DPV}{dpv.removeprefix('dpv:')}" if dpv else f"{DPV}Purpose"


def temporal_resolution(agreement: Agreement) -> str:
    """How finely the recipient learns when events happened, as an ISO 8601 duration."""
    treatment = agreement.fields.get("occurred_at")
    if treatment is None or treatment.name == "keep":
        return RESOLUTIONS["keep"]
    params = treatment.params.get("to") if isinstance(treatment.params, dict) else treatment.params
    return RESOLUTIONS.get(params, RESOLUTIONS["year"]) if isinstance(params, str) else RESOLUTIONS["year"]
