"""The `quality:` section of an event type's contract: what a provider's stream must look like.

Each event type may have `schemas/<event type>.quality.yaml` beside its Avro schema:

    quality:
      completeness: {fields: [period, declared_income], threshold: ">= 98"}   # ODCS nullValues
      validity:                                                               # ODCS invalidValues
        threshold: ">= 99"
        rules:
          - {field: declared_income, min: 0, max: 10000000}
          - {field: period, pattern: '^\\d{4}-(0[1-9]|1[0-2])$'}
          - {field: benefit_type, values: [income_support, unemployment]}
          - {field: postcode, reference: postcodes}                           # a known value
      references: {postcodes: reference/postcodes.v1.txt}                     # name -> file beside the schemas
      uniqueness: {key: event_id, business_key: [national_id, period], threshold: ">= 99.5"}  # ODCS duplicateValues
      timeliness: {max_delay_seconds: 3600, threshold: ">= 98"}              # ODCS slaProperties latency
      volume: {weeks: 4, threshold: ">= 60"}                                  # ODCS rowCount
      consistency:                                                            # across providers
        threshold: ">= 99.9"
        rules:
          - {name: claim_after_death, after: registry.death_registered, at: date_of_death, field: period}

A consistency rule holds an event against another provider's earlier event about the same subject:
the event is inconsistent when an `after` event of its subject was seen and the month of its
`field` is after the month of that event's `at` (a benefit claimed for a month after a registered
death). The processor checks it on the raw streams it sees, keyed by the subject's oversight
pseudonym (`backbone.quality.checks`).

A `reference` rule checks a value against a reference set the contract names (`references:`, a
versioned file under `schemas/reference/`, `backbone.quality.reference`). Uniqueness counts an event
repeating the `key` (the event id) and, with a `business_key`, a different event repeating those
fields' values in the same or the previous hour (`key: [national_id, period]` is short for a
business key beside the event id).

A dimension's score is the share of its checks passed, 0-100 (`backbone.quality.scorecard`); its
threshold is the bar the provider commits to. Loaded once at start-up with every problem named.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, ValidationError, model_validator

from backbone.events.catalog import Catalog, EventSchema
from backbone.quality.errors import QualityContractError
from backbone.quality.reference import ReferenceSet, read_reference

DIMENSIONS = ("completeness", "validity", "uniqueness", "timeliness", "volume", "consistency")
# The Open Data Contract Standard v3 name of each dimension's metric (`quality[].metric`), where it
# has one; timeliness is an SLA property there (`slaProperties[].property: latency`).
ODCS_METRICS = {"completeness": "nullValues", "validity": "invalidValues", "uniqueness": "duplicateValues",
                "volume": "rowCount"}
SUFFIX = ".quality.yaml"
NUMERIC = frozenset({"int", "long", "float", "double"})
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_THRESHOLD = re.compile(r"^\s*(>=|>)\s*(\d+(?:\.\d+)?)\s*$")


@dataclass(slots=True, frozen=True)
class Threshold:
    """A bar on a 0-100 score: `>= 98` or `> 99.5`."""

    op: str
    value: float

    def met(self, score: float) -> bool:
        return score >= self.value if self.op == ">=" else score > self.value

    def __str__(self) -> str:
        return f"{self.op} {self.value:g}"


def parse_threshold(text: Any) -> Threshold:
    """`">= 98"` -> Threshold; a bare number means `>=`. Raises ValueError with the form to use."""
    if isinstance(text, Threshold):
        return text
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        text = f">= {text}"
    match = _THRESHOLD.match(text) if isinstance(text, str) else None
    if match is None or not 0 <= float(match.group(2)) <= 100:
        raise ValueError(f"threshold {text!r} is not a bar on a 0-100 score; write it as \">= 98\" or \"> 99.5\"")
    return Threshold(match.group(1), float(match.group(2)))


# Read from `">= 98"` (or a bare number), written back the same way (YAML, JSON, agreement changes).
ThresholdField = Annotated[Threshold, BeforeValidator(parse_threshold), PlainSerializer(str, return_type=str)]


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Completeness(_Rule):
    fields: list[str] = Field(min_length=1)
    threshold: ThresholdField = Threshold(">=", 100.0)


class ValidityRule(_Rule):
    field: str
    values: list[str | int | float] | None = None
    min: float | None = None
    max: float | None = None
    pattern: str | None = None
    reference: str | None = None  # the name of a reference set in the contract's `references:`

    @model_validator(mode="after")
    def _one_kind(self) -> ValidityRule:
        kinds = [k for k, on in (("values", self.values is not None), ("range", self.min is not None or self.max is not None),
                                 ("pattern", self.pattern is not None), ("reference", self.reference is not None)) if on]
        if len(kinds) != 1:
            raise ValueError(f"field {self.field}: give exactly one of values, min/max, pattern or reference "
                             f"(got {', '.join(kinds) or 'none'})")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"field {self.field}: min {self.min:g} is above max {self.max:g}")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"field {self.field}: pattern {self.pattern!r} is not a regular expression ({exc})") from None
        return self

    @property
    def kind(self) -> str:
        if self.reference is not None:
            return "reference"
        return "values" if self.values is not None else "pattern" if self.pattern is not None else "range"


class Validity(_Rule):
    rules: list[ValidityRule] = Field(min_length=1)
    threshold: ThresholdField = Threshold(">=", 100.0)


class Uniqueness(_Rule):
    key: str = "event_id"
    business_key: list[str] | None = Field(default=None, min_length=1)
    threshold: ThresholdField = Threshold(">=", 100.0)

    @model_validator(mode="before")
    @classmethod
    def _key_list(cls, data: Any) -> Any:
        """`key: [national_id, period]` is a business key beside the event id."""
        if isinstance(data, dict) and isinstance(data.get("key"), list):
            if data.get("business_key") is not None:
                raise ValueError("give the business key once: key: [fields] or business_key: [fields]")
            data = {**data, "business_key": data["key"], "key": "event_id"}
        return data

    @property
    def business_label(self) -> str | None:
        """`national_id+period`: the business key's name in counters and tables."""
        return "+".join(self.business_key) if self.business_key else None


class Timeliness(_Rule):
    """Delay from `occurred_at` to the processor's decision; an event later than the bound is late."""

    max_delay_seconds: float = Field(gt=0)
    threshold: ThresholdField = Threshold(">=", 100.0)


class Volume(_Rule):
    """Events in the hour against the same hour of the `weeks` earlier weeks (their median)."""

    weeks: int = Field(default=4, ge=1, le=52)
    threshold: ThresholdField = Threshold(">=", 50.0)


class ConsistencyRule(_Rule):
    """An event is inconsistent when its subject's `after` event was seen and its `field`'s month is
    after the month of that event's `at` (dates, timestamps or `YYYY-MM...` text)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    after: str
    at: str
    field: str


class Consistency(_Rule):
    rules: list[ConsistencyRule] = Field(min_length=1)
    threshold: ThresholdField = Threshold(">=", 100.0)


class QualitySection(_Rule):
    references: dict[str, str] = Field(default_factory=dict)  # name -> file, relative to the schemas directory
    completeness: Completeness | None = None
    validity: Validity | None = None
    uniqueness: Uniqueness | None = None
    timeliness: Timeliness | None = None
    volume: Volume | None = None
    consistency: Consistency | None = None

    def dimensions(self) -> list[str]:
        return [name for name in DIMENSIONS if getattr(self, name) is not None]

    def threshold(self, dimension: str) -> Threshold | None:
        rule = getattr(self, dimension, None)
        return rule.threshold if rule is not None else None


@dataclass(frozen=True)
class QualityContract:
    """One event type's quality rules, checked against its schema."""

    event_type: str
    source: str
    quality: QualitySection
    references: dict[str, ReferenceSet] = dataclass_field(default_factory=dict)  # loaded from `quality.references`

    @property
    def provider(self) -> str:
        return self.event_type.split(".", 1)[0]


def avro_kind(avro_type: Any) -> str:
    """The Avro type name a rule works on: `string`, `double`, `enum`, ... (nullable unions unwrapped)."""
    if isinstance(avro_type, list):
        rest = [t for t in avro_type if t != "null"]
        return avro_kind(rest[0]) if len(rest) == 1 else "union"
    if isinstance(avro_type, dict):
        return "string" if avro_type.get("logicalType") == "uuid" else avro_type.get("type", "record")
    return str(avro_type)


def _consistency_problems(section: QualitySection, schema: EventSchema, catalog: Catalog | None, where: str) -> list[str]:
    if section.consistency is None:
        return []
    problems: list[str] = []
    if not schema.subject_field:
        problems.append(f"{where}: consistency: {schema.event_type} names no subject; a consistency rule needs one")
    names = [rule.name for rule in section.consistency.rules]
    if len(set(names)) != len(names):
        problems.append(f"{where}: consistency.rules: names {sorted(n for n in set(names) if names.count(n) > 1)} repeat; name each rule once")
    for index, rule in enumerate(section.consistency.rules):
        at = f"{where}: consistency.rules[{index}]"
        if rule.field not in schema.fields or rule.field == "governance":
            problems.append(f"{at}: {schema.event_type} has no field {rule.field!r}")
        if catalog is None:
            continue
        other = catalog.events.get(rule.after)
        if other is None:
            problems.append(f"{at}: after: no event type {rule.after!r} in the catalog")
        elif not other.subject_field:
            problems.append(f"{at}: after: {rule.after} names no subject; a consistency rule needs one")
        elif rule.at not in other.fields or rule.at == "governance":
            problems.append(f"{at}: at: {rule.after} has no field {rule.at!r}")
    return problems


def _field_problems(section: QualitySection, schema: EventSchema, where: str) -> list[str]:
    problems: list[str] = []
    known = ", ".join(name for name in schema.fields if name != "governance")

    def field_of(name: str, rule: str) -> Any | None:
        info = schema.fields.get(name)
        if info is None or name == "governance":
            problems.append(f"{where}: {rule}: {schema.event_type} has no field {name!r}; fields: {known}")
            return None
        return info

    if section.completeness:
        for name in section.completeness.fields:
            field_of(name, "completeness.fields")
    if section.validity:
        for index, rule in enumerate(section.validity.rules):
            info = field_of(rule.field, f"validity.rules[{index}]")
            if info is None:
                continue
            kind = avro_kind(info.type)
            if rule.kind == "range" and kind not in NUMERIC:
                problems.append(f"{where}: validity.rules[{index}]: min/max need a number; {rule.field} is {kind}: use values or pattern")
            if rule.kind == "pattern" and kind != "string":
                problems.append(f"{where}: validity.rules[{index}]: a pattern needs a string; {rule.field} is {kind}: use min/max or values")
            if rule.kind == "reference" and kind not in ("string", "enum"):
                problems.append(f"{where}: validity.rules[{index}]: a reference set holds text; {rule.field} is {kind}: use min/max or values")
            if rule.kind == "reference" and rule.reference not in section.references:
                problems.append(f"{where}: validity.rules[{index}]: no reference set {rule.reference!r}; name its file in "
                                f"`references: {{{rule.reference}: reference/<file>}}`")
            if rule.kind == "values" and kind == "enum":
                symbols = _enum_symbols(info.type)
                unknown = [v for v in rule.values or () if v not in symbols]
                if unknown:
                    problems.append(f"{where}: validity.rules[{index}]: {unknown} are not symbols of {rule.field} "
                                    f"({', '.join(symbols)})")
    if section.uniqueness:
        field_of(section.uniqueness.key, "uniqueness.key")
        for name in section.uniqueness.business_key or ():
            field_of(name, "uniqueness.business_key")
    return problems


@functools.lru_cache(maxsize=16)
def _read_reference(name: str, path: str, mtime_ns: int) -> ReferenceSet:
    """A reference file read once for every contract naming it (again when it changed)."""
    return read_reference(name, Path(path))


def _references(section: QualitySection, base: Path, where: str) -> tuple[dict[str, ReferenceSet], list[str]]:
    """The reference sets the section names, read from files relative to `base` (the schemas directory)."""
    found: dict[str, ReferenceSet] = {}
    problems: list[str] = []
    used = {rule.reference for rule in section.validity.rules} if section.validity else set()
    for name, relative in section.references.items():
        path = (base / relative).resolve()
        if not _NAME.match(name) or Path(relative).is_absolute() or base.resolve() not in path.parents:
            problems.append(f"{where}: references.{name}: name a file under the schemas directory "
                            f"(a relative path such as reference/{name}.v1.txt), by a lower-case name")
            continue
        if name not in used:
            continue  # named but unused: not loaded
        try:
            found[name] = _read_reference(name, str(path), path.stat().st_mtime_ns if path.exists() else 0)
        except ValueError as exc:
            problems.append(f"{where}: references.{name}: {exc}")
    return found, problems


def _enum_symbols(avro_type: Any) -> list[str]:
    if isinstance(avro_type, list):
        avro_type = next(t for t in avro_type if t != "null")
    return list(avro_type.get("symbols", ())) if isinstance(avro_type, dict) else []


def parse_quality(data: Any, schema: EventSchema, source: str, catalog: Catalog | None = None,
                  base: Path | None = None) -> tuple[QualityContract | None, list[str]]:
    """One event type's contract from its YAML mapping; problems name the file and the rule. Reference
    files are read relative to `base` (the directory of `source` by default)."""
    where = f"{source} ({schema.event_type})"
    if not isinstance(data, dict) or set(data) != {"quality"}:
        return None, [f"{where}: expected one top-level key `quality:` holding any of {', '.join(DIMENSIONS)}"]
    try:
        section = QualitySection.model_validate(data["quality"] or {})
    except ValidationError as exc:
        return None, [f"{where}: quality.{'.'.join(str(p) for p in item['loc']) or 'section'}: "
                      f"{item['msg'].removeprefix('Value error, ')}" for item in exc.errors()]
    problems = _field_problems(section, schema, where) + _consistency_problems(section, schema, catalog, where)
    references, missing = _references(section, Path(source).parent if base is None else base, where)
    problems += missing
    return (None if problems else QualityContract(schema.event_type, source, section, references)), problems


def load_quality(schemas_dir: Path, catalog: Catalog) -> dict[str, QualityContract]:
    """Every `<event type>.quality.yaml` in `schemas_dir`, by event type; `QualityContractError`
    lists every problem. An event type without the file has no quality rules."""
    contracts, problems = load_quality_checked(schemas_dir, catalog)
    if problems:
        raise QualityContractError(problems)
    return contracts


def load_quality_checked(schemas_dir: Path, catalog: Catalog) -> tuple[dict[str, QualityContract], list[str]]:
    """The contracts that match their schemas, and every problem of the others (which are left out:
    a provider's schema change must not stop enforcement; the processor logs the problems)."""
    problems: list[str] = []
    contracts: dict[str, QualityContract] = {}
    for path in sorted(Path(schemas_dir).glob(f"*{SUFFIX}")):
        event_type = path.name.removesuffix(SUFFIX)
        if event_type not in catalog.events:
            problems.append(f"{path}: no event type {event_type!r} in the catalog; name the file <event type>{SUFFIX}")
            continue
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problems.append(f"{path}: not valid YAML{at}")
            continue
        contract, found = parse_quality(data, catalog.event(event_type), str(path), catalog)
        problems.extend(found)
        if contract is not None and not found:
            contracts[event_type] = contract
    return contracts, problems


def default_quality(catalog: Catalog | None = None) -> dict[str, QualityContract]:
    """The contracts in `BACKBONE_SCHEMAS_DIR` (the repository's `schemas/` by default)."""
    from backbone.events.catalog import load_catalog
    from backbone.settings import get_settings

    schemas_dir = get_settings().schemas_dir
    return load_quality(schemas_dir, catalog or load_catalog(schemas_dir))


def finite(value: Any) -> bool:
    """A number that is neither NaN nor infinite (NaN passes every comparison's negation)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
