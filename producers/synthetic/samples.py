"""Events shaped like fastavro's decoding of the catalog's schemas, for tests and `bench/policy.py`.

Values follow each field's Avro type (timestamp-millis -> aware datetime, date -> `date`, enum ->
str); governance is what the demo's agencies send (`governance.PROFILES`), so the demo charter permits them.
"""

from __future__ import annotations

import random
import string
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

from backbone.events.catalog import EventSchema
from backbone.policy.treatments import base_type, type_kind
from producers.synthetic.governance import PROFILES
from producers.synthetic.identities import known_postcodes

_EPOCH = datetime(2020, 1, 1, tzinfo=UTC)


def _string(name: str, rng: random.Random) -> str:
    if name.endswith("national_id"):
        return "".join(rng.choices(string.digits, k=9))
    if name.endswith("postcode"):  # a known postcode (schemas/reference/), drawn as any well-formed one would be
        area, letters = rng.randint(1000, 9999), rng.choices("ABCDEGHJKLMNPRTVWXZ", k=2)
        pairs = known_postcodes()[area]
        return f"{area} {pairs['ABCDEGHJKLMNPRTVWXZ'.index(letters[0]) % len(pairs)]}"
    if name == "bank_account":
        return "NL" + "".join(rng.choices(string.digits, k=2)) + "BANK" + "".join(rng.choices(string.digits, k=10))
    if name == "period":
        return f"{rng.randint(2023, 2026)}-{rng.randint(1, 12):02d}"
    if name == "name":
        return rng.choice(["Anna", "Bram", "Chloë", "Daan", "Eva"]) + " " + rng.choice(["de Vries", "Jansen", "Bakker", "Visser"])
    return "".join(rng.choices(string.ascii_uppercase + string.digits, k=8))


def sample_value(name: str, avro_type: Any, rng: random.Random) -> Any:
    """A value for one field as fastavro decodes it."""
    if isinstance(avro_type, dict) and avro_type.get("logicalType") == "uuid":
        return uuid.UUID(int=rng.getrandbits(128), version=4)  # fastavro decodes logicalType uuid to UUID
    kind = type_kind(avro_type)
    if kind == "timestamp":
        return _EPOCH + timedelta(milliseconds=rng.randint(0, 7 * 365 * 86_400_000))
    if kind == "date":
        return date(1940, 1, 1) + timedelta(days=rng.randint(0, 30_000))
    if kind == "enum":
        return rng.choice(avro_type["symbols"])
    if kind in {"int", "long"}:
        return rng.randint(1, 6) if name.endswith("size") else rng.randint(0, 100_000)
    if kind in {"float", "double"}:
        return round(rng.uniform(0, 6000), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    return _string(name, rng)


def sample_event(schema: EventSchema, rng: random.Random, governance: dict[str, Any] | None = None) -> dict[str, Any]:
    """One event of `schema`'s type with the demo governance (or `governance`)."""
    profile = PROFILES.get(schema.event_type)
    event: dict[str, Any] = {}
    for name, info in schema.fields.items():
        if name == "governance":
            event[name] = governance or (profile.tags() if profile else {"lawful_basis": "public_task", "purposes": [], "consent_id": None})
        elif name == "event_type":
            event[name] = schema.event_type
        elif name == "provider":
            event[name] = schema.provider
        elif info.nullable and rng.random() < 0.3:
            event[name] = None
        else:
            event[name] = sample_value(name, base_type(info), rng)
    return event
