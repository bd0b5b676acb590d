"""Objections and consent from the portal: the same record on `consent.changes` that `backbone
consent withdraw` publishes (`producers.sdk.ConsentPublisher`, channel `web`), so every processor
worker denies the person's next event under that purpose (`consent_withdrawn`); and a consent
receipt the person keeps: JSON with the ISO/IEC TS 27560 consent record elements, in W3C DPV terms.

The receipt names the person by their oversight pseudonym (what the audit trail names them by),
never by their id; it holds no value of any event.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from backbone.events.catalog import Catalog
from backbone.settings import Settings

RECEIPT_SCHEMA = "ISO/IEC TS 27560:2023 consent record, DPV serialisation (backbone-consent-receipt/1)"
DPV_CONTEXT = {"dpv": "https://w3id.org/dpv#", "dct": "http://purl.org/dc/terms/", "xsd": "http://www.w3.org/2001/XMLSchema#"}
STATUS = {"withdrawn": "dpv:ConsentWithdrawn", "objected": "dpv:ConsentRefused", "granted": "dpv:ConsentGiven"}


def consent_receipt(*, subject_token: str, purpose: str, catalog: Catalog, status: str, event_id: str,
                    controllers: list[str], at: datetime | None = None) -> dict[str, Any]:
    """The receipt of one consent change (`status`: withdrawn, objected or granted)."""
    at = at or datetime.now(UTC)
    vocabulary = catalog.purposes.get(purpose)
    return {
        "@context": DPV_CONTEXT,
        "schema_version": RECEIPT_SCHEMA,
        "record_id": str(uuid.uuid4()),
        "@type": "dpv:ConsentRecord",
        "pii_principal_id": {"@type": "dpv:DataSubject", "dpv:hasIdentifier": subject_token,
                             "dct:description": "your pseudonym in the audit trail (oversight domain); not your id"},
        "dpv:hasDataController": [{"@type": "dpv:DataController", "dct:identifier": name} for name in controllers],
        "purposes": [{"@type": "dpv:Purpose", "dct:identifier": purpose,
                      "dpv:hasPurpose": vocabulary.dpv if vocabulary is not None else None,
                      "dct:title": vocabulary.label if vocabulary is not None else purpose}],
        "dpv:hasLegalBasis": "dpv:Consent",
        "event": {"@type": "dpv:ConsentStatus", "dpv:hasConsentStatus": STATUS[status], "dct:date": at.isoformat(),
                  "dpv:hasJustification": "by the data subject, in the citizen's portal", "collection_method": "web"},
        "consent_change_event_id": event_id,
        "enforcement": "every processor worker reads consent.changes and denies the next event under this purpose "
                       "as consent_withdrawn",
    }


def withdraw(settings: Settings, catalog: Catalog, subject: str, purpose: str) -> str:
    """Publish the withdrawal (acknowledged by the broker before this returns); its event id."""
    from producers.sdk import ConsentPublisher

    catalog.check_purpose(purpose)
    with ConsentPublisher(settings, catalog) as publisher:
        return publisher.withdraw(subject, purpose, channel="web")
