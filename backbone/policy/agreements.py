"""Data-sharing agreements as code: pydantic models, validated against the event schemas.

One YAML file per agreement version in `agreements/`. `load_agreements(dir, catalog)` returns the
`Charter` or raises one `AgreementError` listing every problem found (file, agreement, field, fix),
not just the first. Nothing here runs per event: the engine compiles the charter.

Rules the loader enforces beyond the pydantic model:
- every event type exists and belongs to the agreement's provider; every listed field exists in
  each of them and its treatment fits the field's type; header fields are never listed (they are
  always released as-is) and `governance` is never released;
- purposes come from the vocabulary; the CEL condition compiles and names only event fields;
- a `PII` field is kept in clear only with `identified: true` and a legal_obligation or
  public_task basis; `pseudonymise` needs a sharing `domain`; consent-based agreements need events
  that name their data subject;
- `survives_erasure: true` (the agreement keeps receiving events about erased subjects) only with
  a legal_obligation basis: only a legal duty outlives a person's erasure;
- two active versions of one agreement id, or two active agreements for the same provider,
  recipient and event type, never have overlapping validity periods (so at most one applies at
  any time).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import cel
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from backbone.errors import AgreementError
from backbone.events.catalog import Catalog
from backbone.policy.dp_release import DpRelease
from backbone.quality.contract import DIMENSIONS, Threshold, ThresholdField

Status = Literal["draft", "active", "suspended", "revoked"]
LawfulBasis = Literal["consent", "contract", "legal_obligation", "vital_interests", "public_task", "legitimate_interests"]
STATUSES: tuple[str, ...] = ("draft", "active", "suspended", "revoked")
# Released to every recipient, so sinks can deduplicate and order. `event_id` is released as the
# recipient's own id for the event (derived under its domain key); the envelope fields in
# `ENVELOPE_TREATABLE` may be listed in `fields` with a treatment (e.g. `occurred_at: {generalise:
# day}`), the others never are.
RELEASED_HEADER = ("event_id", "event_type", "occurred_at", "provider")
ENVELOPE_TREATABLE = frozenset({"occurred_at"})
ENVELOPE_TREATMENTS = frozenset({"keep", "generalise"})
GOVERNANCE = "governance"
CLEAR_PII_BASES = frozenset({"legal_obligation", "public_task"})
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
# Names a CEL macro binds (`items.exists(x, x > 1)`): allowed in conditions besides event fields.
_MACRO_VARIABLE = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,")


@lru_cache(maxsize=1024)
def compile_condition(source: str) -> Any:
    """A CEL program, compiled once per distinct condition text (programs are immutable)."""
    return cel.compile(source)


def released_header(agreement: Agreement) -> tuple[str, ...]:
    """The header fields released as the event carries them: all but the envelope fields the
    agreement gives a treatment of their own."""
    return tuple(name for name in RELEASED_HEADER if name not in agreement.fields)


def _utc(value: Any) -> Any:
    """YAML dates mean midnight UTC; naive datetimes are UTC."""
    if isinstance(value, date) and not isinstance(value, datetime):
        return datetime.combine(value, time(), tzinfo=UTC)
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class FieldTreatment(BaseModel):
    """One field's treatment: `keep`, or a one-key mapping such as `{generalise: year}`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    params: Any = None

    @model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value}
        if isinstance(value, dict) and len(value) == 1 and "name" not in value:
            (name, params), = value.items()
            return {"name": name, "params": params}
        if isinstance(value, FieldTreatment | dict):
            return value
        raise ValueError("a treatment is a name (keep, pseudonymise, ...) or a one-key mapping like {generalise: year}")

    def to_yaml(self) -> Any:
        return self.name if self.params is None else {self.name: self.params}


class Suppression(BaseModel):
    """Why a data subject is never told of this agreement's disclosures: the law that says so."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    legal_reference: str = Field(min_length=3)


class Notice(BaseModel):
    """When the data subject is shown this agreement's disclosures (the portal): later, at a date
    (`deferred_until`) or when oversight releases them (`until_released`), or never, under a stated
    legal reference (`suppressed`). Exactly one. Without a `notice`, at once. The audit trail seals
    every decision at decision time whatever the notice says."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    deferred_until: datetime | None = None
    until_released: bool = False
    suppressed: Suppression | None = None

    @field_validator("deferred_until", mode="before")
    @classmethod
    def _date_is_midnight_utc(cls, value: Any) -> Any:
        return _utc(value)

    @field_validator("deferred_until")
    @classmethod
    def _naive_is_utc(cls, value: datetime | None) -> datetime | None:
        return _utc(value)

    @model_validator(mode="after")
    def _exactly_one(self) -> Notice:
        chosen = [self.deferred_until is not None, self.until_released, self.suppressed is not None]
        if sum(chosen) != 1:
            raise ValueError("notice takes exactly one of deferred_until: DATE, until_released: true, "
                             "suppressed: {legal_reference: TEXT}")
        return self

    @property
    def kind(self) -> str:
        return "deferred" if self.deferred_until is not None else "until_released" if self.until_released else "suppressed"


class Agreement(BaseModel):
    """One version of a data-sharing agreement between a provider and a recipient."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=NAME_PATTERN)
    version: int = Field(ge=1)
    title: str
    description: str = ""
    provider: str = Field(pattern=NAME_PATTERN)
    recipient: str = Field(pattern=NAME_PATTERN)
    event_types: tuple[str, ...] = Field(min_length=1)
    purposes: tuple[str, ...] = Field(min_length=1)
    lawful_basis: LawfulBasis
    valid_from: datetime
    valid_until: datetime | None = None
    status: Status = "draft"
    condition: str | None = None
    domain: str | None = Field(None, pattern=NAME_PATTERN)
    retention_days: int = Field(ge=1)
    identified: bool = False
    # Fields this agreement releases exactly although a recipient in another sharing domain gets the
    # same event with them too: a deliberate, documented link (the loader refuses it otherwise).
    linkable_by: tuple[str, ...] = ()
    # Events about an erased subject are still shared under this agreement (`backbone erase`): only
    # for a legal obligation that outlives the erasure (GDPR Art. 17(3)(b)); the loader checks it.
    survives_erasure: bool = False
    # When the data subject sees these disclosures in the portal (`Notice`); None: at once.
    notice: Notice | None = None
    # Bars on the provider's data-quality scores (issue 32), e.g. {completeness: ">= 98"}: records of
    # an event type whose last closed quality window is below a bar are held (denied, reason
    # quality_breach) or delivered flagged (a `quality` header naming the failed dimensions).
    require_quality: dict[str, ThresholdField] = Field(default_factory=dict)
    on_quality_breach: Literal["hold", "flag"] = "hold"
    fields: dict[str, FieldTreatment]
    # Differentially private aggregates of the rows landed under this agreement, for other
    # recipients, within privacy budgets (`backbone.policy.dp_release`; `backbone dp`).
    dp_release: DpRelease | None = None

    @field_validator("valid_from", "valid_until", mode="before")
    @classmethod
    def _dates_are_midnight_utc(cls, value: Any) -> Any:
        return _utc(value)

    @field_validator("valid_from", "valid_until")
    @classmethod
    def _naive_is_utc(cls, value: datetime | None) -> datetime | None:
        return _utc(value)

    @field_validator("require_quality")
    @classmethod
    def _known_dimensions(cls, value: dict[str, Threshold]) -> dict[str, Threshold]:
        unknown = sorted(set(value) - set(DIMENSIONS))
        if unknown:
            raise ValueError(f"unknown quality dimension(s) {', '.join(unknown)}; use {', '.join(DIMENSIONS)}")
        return value

    @model_validator(mode="after")
    def _period_is_forward(self) -> Agreement:
        if self.valid_until is not None and self.valid_until <= self.valid_from:
            raise ValueError("valid_until must be after valid_from")
        return self

    @property
    def key(self) -> str:
        """`id@version`, how errors, the audit trail and the CLI name this agreement."""
        return f"{self.id}@{self.version}"

    @property
    def linkage_domain(self) -> str:
        """Within what records may link: the sharing domain, else the recipient alone."""
        return self.domain or f"@{self.recipient}"

    @property
    def program(self) -> Any:
        """The compiled CEL condition (None without one); compiled once, on first use."""
        return None if self.condition is None else compile_condition(self.condition)

    def valid_at(self, now: datetime) -> bool:
        """Inside the validity period: `valid_from` inclusive, `valid_until` exclusive."""
        return self.valid_from <= now and (self.valid_until is None or now < self.valid_until)

    def in_force_at(self, now: datetime) -> bool:
        """Active and inside its validity period."""
        return self.status == "active" and self.valid_at(now)

    def released_names(self) -> list[str]:
        return [name for name, treatment in self.fields.items() if treatment.name != "drop"]


@dataclass(frozen=True)
class Charter:
    """Every agreement version, with the file it came from; the engine compiles it."""

    catalog: Catalog
    agreements: tuple[Agreement, ...] = ()
    sources: Mapping[str, str] = field(default_factory=dict)

    def get(self, agreement_id: str, version: int | None = None) -> Agreement:
        """A version of an agreement (the highest when `version` is None)."""
        versions = self.versions(agreement_id)
        if not versions:
            raise AgreementError(f"no agreement {agreement_id!r} in the charter")
        if version is None:
            return versions[-1]
        for agreement in versions:
            if agreement.version == version:
                return agreement
        raise AgreementError(f"agreement {agreement_id!r} has no version {version}; versions: {[a.version for a in versions]}")

    def current(self, agreement_id: str, now: datetime | None = None) -> Agreement:
        """The version in force at `now` (default: now), else the highest version."""
        moment = now or datetime.now(UTC)
        for agreement in reversed(self.versions(agreement_id)):
            if agreement.in_force_at(moment):
                return agreement
        return self.get(agreement_id)

    def versions(self, agreement_id: str) -> list[Agreement]:
        return sorted((a for a in self.agreements if a.id == agreement_id), key=lambda a: a.version)

    def source(self, agreement: Agreement) -> str:
        return self.sources.get(agreement.key, "<runtime>")

    def recipients_of(self, provider: str) -> tuple[str, ...]:
        """Every recipient named in any agreement (any status) with this provider."""
        return tuple(sorted({a.recipient for a in self.agreements if a.provider == provider}))

    def covering(self, event_type: str, recipient: str) -> list[Agreement]:
        """Every version of every agreement sharing `event_type` with `recipient`, any status."""
        return [a for a in self.agreements if a.recipient == recipient and event_type in a.event_types]

    def domains(self) -> set[str]:
        return {a.domain for a in self.agreements if a.domain}

    def providers(self) -> set[str]:
        return {a.provider for a in self.agreements} | {schema.provider for schema in self.catalog.events.values()}

    def with_agreement(self, agreement: Agreement, source: str = "<runtime>") -> Charter:
        """A charter with `agreement` added (or replacing the same id@version), validated."""
        kept = tuple(a for a in self.agreements if a.key != agreement.key)
        sources = {**self.sources, agreement.key: source}
        charter = Charter(self.catalog, kept + (agreement,), sources)
        charter.raise_problems()
        return charter

    def with_status(self, agreement_id: str, version: int, status: Status) -> Charter:
        if status not in STATUSES:
            raise AgreementError(f"unknown status {status!r}; use one of {', '.join(STATUSES)}")
        current = self.get(agreement_id, version)
        return self.with_agreement(current.model_copy(update={"status": status}), self.source(current))

    def problems(self) -> list[str]:
        """Every problem with the agreements, each naming file, agreement and field."""
        from backbone.policy.rules import charter_problems

        return charter_problems(self)

    def raise_problems(self) -> None:
        found = self.problems()
        if found:
            raise AgreementError(found)



def _where(agreement: Agreement | str, source: str) -> str:
    name = agreement.key if isinstance(agreement, Agreement) else agreement
    return f"agreement {name} in {source}"


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _describe_validation(error: ValidationError, where: str) -> list[str]:
    problems = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "agreement"
        problems.append(f"{where}: field {location}: {item['msg']}")
    return problems


def parse_agreement(data: Any, source: str) -> tuple[Agreement | None, list[str]]:
    """Build an agreement from a mapping (YAML or JSON); problems name the source and id@version."""
    if not isinstance(data, dict):
        return None, [f"{source}: expected one agreement as a YAML mapping (id, version, title, ...)"]
    name = f"{data.get('id', '?')}@{data.get('version', '?')}"
    try:
        return Agreement.model_validate(data), []
    except ValidationError as exc:
        return None, _describe_validation(exc, _where(name, source))


def agreement_files(directory: Path) -> list[Path]:
    return sorted(p for p in Path(directory).iterdir() if p.suffix in {".yaml", ".yml"} and p.is_file())


def load_agreements(directory: Path, catalog: Catalog) -> Charter:
    """Every agreement in `directory` (or one YAML file), validated; `AgreementError` lists all problems."""
    directory = Path(directory)
    if directory.is_file():
        paths = [directory]
    elif directory.is_dir():
        paths = agreement_files(directory)
    else:
        raise AgreementError(f"agreements directory {directory} does not exist; set BACKBONE_AGREEMENTS_DIR")
    problems: list[str] = []
    agreements: list[Agreement] = []
    sources: dict[str, str] = {}
    for path in paths:
        source = _display(path)
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problems.append(f"{source}: not valid YAML{at} ({getattr(exc, 'problem', None) or type(exc).__name__})")
            continue
        except OSError as exc:
            problems.append(f"{source}: cannot read ({exc.strerror})")
            continue
        agreement, found = parse_agreement(data, source)
        problems.extend(found)
        if agreement is None:
            continue
        if agreement.key in sources:
            problems.append(f"{_where(agreement, source)}: field version: {agreement.key} is also defined in {sources[agreement.key]}; bump the version")
            continue
        agreements.append(agreement)
        sources[agreement.key] = source
    charter = Charter(catalog, tuple(agreements), sources)
    problems.extend(charter.problems())
    if problems:
        raise AgreementError(problems)
    return charter


def default_charter() -> Charter:
    """The charter in `BACKBONE_AGREEMENTS_DIR` against the catalog in `BACKBONE_SCHEMAS_DIR`."""
    from backbone.events.catalog import default_catalog
    from backbone.settings import get_settings

    return load_agreements(get_settings().agreements_dir, default_catalog())


def to_yaml(agreement: Agreement) -> str:
    """YAML text of an agreement, as the files hold it (also the `agreements.changes` payload)."""
    data = agreement.model_dump(mode="json", exclude_none=True)
    if not agreement.survives_erasure:
        data.pop("survives_erasure")  # texts written before the field existed stay byte for byte the same
    data["fields"] = {name: treatment.to_yaml() for name, treatment in agreement.fields.items()}
    return yaml.safe_dump(data, sort_keys=False)


def all_event_types(agreements: Iterable[Agreement]) -> set[str]:
    return {event_type for agreement in agreements for event_type in agreement.event_types}
