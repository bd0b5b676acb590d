"""An event type's contract as an Open Data Contract Standard v3.1.0 document (issue 32): its Avro
fields as the schema's properties (with their classification tags) and its `quality:` section as
ODCS quality checks: completeness as `nullValues`, validity as `invalidValues` (a reference set by
its file, size and SHA-256, and its `validValues` when small), uniqueness as `duplicateValues` (a
business key at the dataset level with its `properties`), each in percent of the values checked; volume as `rowCount` in percent of the
same hour in earlier weeks; timeliness as the `latency` SLA property. Pure; validated against the
vendored JSON schema (`vendor/odcs/`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from backbone.events.catalog import EventSchema
from backbone.quality.contract import QualityContract, Threshold, ValidityRule, avro_kind
from backbone.quality.errors import QualityContractError
from backbone.settings import PROJECT_ROOT

ODCS_VERSION = "v3.1.0"
SCHEMA_FILE = PROJECT_ROOT / "vendor" / "odcs" / "odcs-json-schema-v3.1.0.json"
_LOGICAL = {"string": "string", "enum": "string", "int": "integer", "long": "integer", "float": "number",
            "double": "number", "boolean": "boolean", "record": "object", "array": "array"}


def _logical(avro_type: Any) -> str:
    if isinstance(avro_type, dict) and avro_type.get("logicalType") in ("timestamp-millis", "timestamp-micros"):
        return "timestamp"
    if isinstance(avro_type, dict) and avro_type.get("logicalType") == "date":
        return "date"
    if isinstance(avro_type, list):
        rest = [t for t in avro_type if t != "null"]
        return _logical(rest[0]) if len(rest) == 1 else "object"
    return _LOGICAL.get(avro_kind(avro_type), "object")


def _failures_at_most(threshold: Threshold) -> dict[str, float]:
    """A bar on the score (share passed) as the ODCS bound on the share failed, in percent."""
    share = round(100.0 - threshold.value, 6)
    return {"mustBeLessThan": share} if threshold.op == ">" else {"mustBeLessOrEqualTo": share}


INLINE_REFERENCE = 1_000  # a reference set this small is written out as `validValues`


def _validity_arguments(rule: ValidityRule, contract: QualityContract) -> dict[str, Any]:
    if rule.reference is not None:
        found = contract.references.get(rule.reference)
        where = contract.quality.references.get(rule.reference, "")
        arguments: dict[str, Any] = {"reference": {"name": rule.reference, "file": where, "values": found.size if found else None,
                                                   "sha256": found.sha256 if found else None}}
        if found is not None and found.exact and found.size <= INLINE_REFERENCE:
            arguments["validValues"] = sorted(found.members)
        return arguments
    if rule.values is not None:
        return {"validValues": list(rule.values)}
    if rule.pattern is not None:
        return {"pattern": rule.pattern}
    return {key: value for key, value in (("minimum", rule.min), ("maximum", rule.max)) if value is not None}


def odcs_document(schema: EventSchema, contract: QualityContract | None) -> dict[str, Any]:
    """The ODCS document of one event type (its raw topic as the dataset)."""
    quality = contract.quality if contract is not None else None
    per_field: dict[str, list[dict[str, Any]]] = {}
    if quality and quality.completeness:
        for name in quality.completeness.fields:
            per_field.setdefault(name, []).append({
                "name": f"{name}_completeness", "dimension": "completeness", "type": "library", "metric": "nullValues",
                "unit": "percent", **_failures_at_most(quality.completeness.threshold),
                "description": f"null, empty or NaN {name} in at most this share of an hour's events "
                               f"(score {quality.completeness.threshold} over every listed field)"})
    if quality and quality.validity:
        for rule in quality.validity.rules:
            per_field.setdefault(rule.field, []).append({
                "name": f"{rule.field}_{rule.kind}", "dimension": "conformity", "type": "library", "metric": "invalidValues",
                "unit": "percent", "arguments": _validity_arguments(rule, contract), **_failures_at_most(quality.validity.threshold),
                "description": f"values present of {rule.field} outside its {rule.kind}"
                               + (f" set {rule.reference} ({quality.references.get(rule.reference)}, under the schemas directory)"
                                  if rule.reference else "") + f" (score {quality.validity.threshold})"})
    if quality and quality.uniqueness:
        per_field.setdefault(quality.uniqueness.key, []).append({
            "name": f"{quality.uniqueness.key}_uniqueness", "dimension": "uniqueness", "type": "library",
            "metric": "duplicateValues", "unit": "percent", **_failures_at_most(quality.uniqueness.threshold),
            "description": "events repeating a key seen in the same or the previous hour"})
    properties = []
    for name, info in schema.fields.items():
        prop: dict[str, Any] = {"name": name, "logicalType": _logical(info.type), "physicalType": json.dumps(info.type)
                                if not isinstance(info.type, str) else info.type, "required": not info.nullable}
        if info.doc:
            prop["description"] = info.doc
        if info.tags:
            prop["classification"] = "restricted"
            prop["tags"] = sorted(info.tags)
        if name in per_field:
            prop["quality"] = per_field[name]
        properties.append(prop)
    dataset: dict[str, Any] = {"name": schema.event_type.replace(".", "_"), "physicalName": f"raw.{schema.event_type}",
                               "physicalType": "topic", "logicalType": "object", "properties": properties}
    if schema.avro.get("doc"):
        dataset["description"] = schema.avro["doc"]
    checks: list[dict[str, Any]] = []
    if quality and quality.volume:
        checks.append({"name": "hourly_volume", "dimension": "completeness", "type": "library", "metric": "rowCount",
                       "unit": "percent", "mustBeGreaterOrEqualTo": quality.volume.threshold.value,
                       "arguments": {"window": "hour", "baseline": f"median of the same hour in the {quality.volume.weeks} earlier weeks"},
                       "description": f"events in an hour, in percent of the baseline (score {quality.volume.threshold})"})
    if quality and quality.timeliness:
        checks.append({"name": "on_time", "dimension": "timeliness", "type": "text",
                       "description": f"events decided within {quality.timeliness.max_delay_seconds:g} s of occurred_at: "
                                      f"score {quality.timeliness.threshold} of an hour's events"})
    if quality and quality.consistency:
        for rule in quality.consistency.rules:
            checks.append({"name": rule.name, "dimension": "consistency", "type": "text",
                           "description": f"no event for a {rule.field} month after the month of its subject's {rule.after} "
                                          f"{rule.at}: score {quality.consistency.threshold} of an hour's events"})
    if quality and quality.uniqueness and quality.uniqueness.business_key:
        checks.append({"name": f"{'_'.join(quality.uniqueness.business_key)}_uniqueness", "dimension": "uniqueness", "type": "library",
                       "metric": "duplicateValues", "unit": "percent", "arguments": {"properties": list(quality.uniqueness.business_key)},
                       **_failures_at_most(quality.uniqueness.threshold),
                       "description": "events repeating the business key of another event of the same or the previous hour "
                                      f"(score {quality.uniqueness.threshold} with the event id's duplicates)"})
    if checks:
        dataset["quality"] = checks
    document: dict[str, Any] = {
        "apiVersion": ODCS_VERSION, "kind": "DataContract", "id": f"backbone-{schema.event_type}", "name": schema.event_type,
        "version": "1.0.0", "status": "active", "domain": schema.provider,
        "description": {"purpose": f"Events {schema.event_type} that {schema.provider} publishes on the backbone",
                        "usage": "shared only under data-sharing agreements, field by field (agreements/)"},
        "schema": [dataset],
    }
    if quality and quality.timeliness:
        document["slaProperties"] = [{"property": "latency", "value": quality.timeliness.max_delay_seconds, "unit": "s",
                                      "element": f"{dataset['name']}.occurred_at",
                                      "description": "from occurred_at to the backbone's decision"}]
    return document


def validate_odcs(document: dict[str, Any], schema_file: Path = SCHEMA_FILE) -> None:
    """Raise `QualityContractError` naming the first places the document breaks the ODCS JSON schema."""
    from jsonschema import Draft201909Validator

    try:
        validator = Draft201909Validator(json.loads(schema_file.read_text()))
    except OSError:
        raise QualityContractError(f"the ODCS JSON schema {schema_file} is missing; it ships in the repository's vendor/odcs/") from None
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    if errors:
        raise QualityContractError([f"ODCS document at {'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message[:200]}"
                                    for e in errors[:5]])
