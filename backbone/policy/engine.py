"""Policy decisions: for each event and each possible recipient, permit (with the released record)
or deny with exactly one reason code. Fail closed: anything unexpected denies.

The charter is compiled per event type into plain closures over precomputed tuples, so the hot path
does no YAML, regex, schema or pydantic work. Runtime changes (`apply`, `set_status`) recompile the
affected event types and swap them in with one assignment.

Order of checks for (event, recipient), first failing check wins:

0. `erased`                the event's subject was erased (`backbone erase`; the engine's `erasures`
                           state, asked once per event), unless the agreement in force at `now`
                           survives erasure (`survives_erasure: true`, legal obligation only): then
                           the checks below decide as for anyone else (also: the look-up raises)
1. `no_agreement`          no agreement (any status, any version) shares this event type with the recipient
2. `agreement_inactive`    none of those is `active` with `valid_from <= now < valid_until`
3. `purpose_not_permitted` an agreement purpose is missing from the event's governance purposes
                           (also: the event's governance cannot be read)
4. `basis_mismatch`        the agreement's lawful basis differs from the event's; a consent-based
                           agreement also matches an event carrying a consent reference
                           (`governance.consent_id`): the provider may hold the data on another
                           basis while the subject consented to this sharing
5. `consent_missing`       consent basis: no consent record for the subject and a purpose
                           (also: the subject is empty, or the consent look-up raises)
   `consent_withdrawn`     consent basis: the latest record for a purpose is a withdrawal
6. `condition_false`       the CEL condition is not `true` (also: it raises or is not a boolean;
                           and the transform raises on an unexpected value)

Possible recipients of an event are every recipient named in any agreement of the event's provider.
The loader guarantees at most one active agreement per (provider, recipient, event type) at any
time, so "the agreement valid at `now`" is always unique.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time
from typing import Any

from backbone.errors import AgreementError
from backbone.events.catalog import EventSchema
from backbone.keys.keyring import OVERSIGHT_DOMAIN, Keyring
from backbone.keys.pseudonym import encrypt_function, event_id_function, token_function
from backbone.policy.agreements import Agreement, Charter, Status, parse_agreement, released_header
from backbone.policy.decision import (
    AGREEMENT_INACTIVE,
    BASIS_MISMATCH,
    CONDITION_FALSE,
    CONSENT_MISSING,
    CONSENT_WITHDRAWN,
    ERASED,
    NO_AGREEMENT,
    PURPOSE_NOT_PERMITTED,
    REASONS,
    ConsentState,
    Decision,
    ErasureState,
    NoErasures,
)
from backbone.policy.released import field_entry, header_entries, record_schema
from backbone.policy.treatments import TreatmentScope, base_type, compile_treatment, type_kind


class KeyringKeys:
    """Keyed functions from a keyring, made once per domain and provider."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._made: dict[tuple[str, str], tuple[Callable[[Any], str], str]] = {}

    def pseudonymiser(self, domain: str) -> tuple[Callable[[Any], str], str]:
        if ("domain", domain) not in self._made:
            self._made[("domain", domain)] = token_function(self.keyring, domain)
        return self._made[("domain", domain)]

    def event_ids(self, agreement: Agreement) -> Callable[[Any], str]:
        """Source event id -> the recipient's event id under `agreement` (its domain's key; the
        oversight key, recipient-bound, for an agreement without a domain)."""
        domain = agreement.domain or OVERSIGHT_DOMAIN
        made = ("event-id", f"{domain}\x00{agreement.recipient}")
        if made not in self._made:
            self._made[made] = (event_id_function(self.keyring, domain, agreement.recipient), "")
        return self._made[made][0]

    def encryptor(self, provider: str, domain: str, field: str) -> tuple[Callable[[Any], str], str]:
        made = ("provider", f"{provider}\x00{domain}\x00{field}")
        if made not in self._made:
            self._made[made] = encrypt_function(self.keyring, provider, domain, field)
        return self._made[made]


Decide = Callable[[dict, ConsentState, datetime], Decision]


@dataclass(slots=True, frozen=True)
class _Release:
    """An agreement compiled for one event type: released field plan and output schema fields."""

    agreement: Agreement
    plan: tuple[tuple[str, Callable[[Any], Any] | None], ...]
    released_fields: tuple[str, ...]
    key_ids: tuple[str, ...]
    schema_fields: tuple[dict[str, Any], ...]


def _cel_value(kind: str) -> Callable[[Any], Any] | None:
    # CEL has timestamps but no dates: a date becomes midnight UTC of that day.
    if kind == "date":
        return lambda value: None if value is None else datetime.combine(value, time(), tzinfo=UTC)
    return None


def _compile_release(agreement: Agreement, schema: EventSchema, keys: KeyringKeys) -> _Release:
    scope = TreatmentScope(agreement.domain, agreement.provider, keys, agreement.recipient)
    plan: list[tuple[str, Callable[[Any], Any] | None]] = []
    key_ids: list[str] = []
    schema_fields: list[dict[str, Any]] = header_entries(agreement, schema)
    for name, info in schema.fields.items():  # schema order: stable record and schema layout
        treatment = agreement.fields.get(name)
        if treatment is None:
            continue
        compiled = compile_treatment(treatment.name, treatment.params, info, scope)
        if not compiled.released:
            continue
        plan.append((name, compiled.apply))
        if compiled.key_id and compiled.key_id not in key_ids:
            key_ids.append(compiled.key_id)
        schema_fields.append(field_entry(name, info, treatment.name, compiled))
    released = released_header(agreement) + tuple(name for name, _ in plan)
    return _Release(agreement, tuple(plan), released, tuple(key_ids), tuple(schema_fields))


def _deny(recipient: str, agreement: Agreement | None, reason: str) -> Decision:
    if agreement is None:
        return Decision(recipient, None, None, False, reason, None, (), (), ())
    return Decision(recipient, agreement.id, agreement.version, False, reason, None, (), agreement.purposes, ())


def _compile_agreement(recipient: str, release: _Release, schema: EventSchema, keys: KeyringKeys) -> Decide:
    """The checks after "is an agreement in force", as one closure for one event type."""
    agreement = release.agreement
    agreement_id, version = agreement.id, agreement.version
    purposes = agreement.purposes
    basis = agreement.lawful_basis
    needs_consent = basis == "consent"
    subject_field = schema.subject_field
    program = agreement.program
    condition_inputs = tuple(
        (name, _cel_value(type_kind(base_type(schema.fields[name])))) for name in (program.variables() if program else ())
        if name in schema.fields
    )
    # event_id becomes the recipient's own id; the rest of the header as the event carries it
    header = tuple(name for name in released_header(agreement) if name != "event_id")
    event_id_of = keys.event_ids(agreement)
    key_of = keys.pseudonymiser(agreement.domain)[0] if agreement.domain and subject_field else None
    plan = release.plan
    released_fields = release.released_fields
    key_ids = release.key_ids
    denied = {reason: _deny(recipient, agreement, reason) for reason in REASONS}
    purpose_denied = denied[PURPOSE_NOT_PERMITTED]
    basis_denied = denied[BASIS_MISMATCH]
    consent_missing = denied[CONSENT_MISSING]
    consent_withdrawn = denied[CONSENT_WITHDRAWN]
    condition_denied = denied[CONDITION_FALSE]

    def decide(event: dict, consent: ConsentState, now: datetime) -> Decision:
        try:
            governance = event["governance"]
            permitted = governance["purposes"]
            for purpose in purposes:
                if purpose not in permitted:
                    return purpose_denied
            if governance["lawful_basis"] != basis and not (needs_consent and governance["consent_id"]):
                return basis_denied
        except Exception:  # noqa: BLE001 - unreadable governance permits nothing
            return purpose_denied
        if needs_consent:
            try:
                subject = event[subject_field]
                if not subject:
                    return consent_missing
                for purpose in purposes:
                    record = consent.get(subject, purpose)
                    if record is None:
                        return consent_missing
                    if record.status != "granted":
                        return consent_withdrawn
            except Exception:  # noqa: BLE001 - a consent store failure never releases data
                return consent_missing
        try:
            if program is not None:
                context = {
                    name: (event[name] if convert is None else convert(event[name])) for name, convert in condition_inputs
                }
                if program.execute(context) is not True:
                    return condition_denied
            record = {"event_id": event_id_of(event["event_id"])}
            for name in header:
                record[name] = event[name]
            for name, apply in plan:
                value = event[name]
                record[name] = value if apply is None or value is None else apply(value)
            subject = event[subject_field] if key_of is not None else None
            key = key_of(subject) if subject else None
        except Exception:  # noqa: BLE001 - fail closed, documented as condition_false
            return condition_denied
        return Decision(recipient, agreement_id, version, True, None, record, released_fields, purposes, key_ids, key)

    return decide


def _compile_recipient(recipient: str, covering: list[Agreement], schema: EventSchema,
                       keys: KeyringKeys) -> tuple[Decide, Decide, dict[str, _Release]]:
    """(decide, decide for an erased subject, compiled releases) for one recipient and event type."""
    if not covering:
        no_agreement = _deny(recipient, None, NO_AGREEMENT)
        erased_none = _deny(recipient, None, ERASED)
        return (lambda event, consent, now: no_agreement), (lambda event, consent, now: erased_none), {}
    latest = max(covering, key=lambda a: (a.version, a.valid_from))
    inactive = _deny(recipient, latest, AGREEMENT_INACTIVE)
    erased_latest = _deny(recipient, latest, ERASED)
    releases: dict[str, _Release] = {}
    windows = []
    for agreement in sorted(covering, key=lambda a: a.valid_from):
        release = _compile_release(agreement, schema, keys)
        releases[agreement.key] = release
        if agreement.status == "active":
            decide_agreement = _compile_agreement(recipient, release, schema, keys)
            # An erased subject's events: the agreement decides only if it survives erasure.
            erased = decide_agreement if agreement.survives_erasure else _denial(_deny(recipient, agreement, ERASED))
            windows.append((agreement.valid_from, agreement.valid_until, decide_agreement, erased))
    windows_in_force = tuple(windows)

    def decide(event: dict, consent: ConsentState, now: datetime) -> Decision:
        for valid_from, valid_until, decide_agreement, _ in windows_in_force:
            if valid_from <= now and (valid_until is None or now < valid_until):
                return decide_agreement(event, consent, now)
        return inactive

    def decide_erased(event: dict, consent: ConsentState, now: datetime) -> Decision:
        for valid_from, valid_until, _, decide_agreement in windows_in_force:
            if valid_from <= now and (valid_until is None or now < valid_until):
                return decide_agreement(event, consent, now)
        return erased_latest

    return decide, decide_erased, releases


def _denial(decision: Decision) -> Decide:
    return lambda event, consent, now: decision


@dataclass(slots=True, frozen=True)
class _EventPlan:
    recipients: tuple[str, ...]
    deciders: tuple[Decide, ...]
    erased_deciders: tuple[Decide, ...]  # the same recipients, for a subject who was erased
    subject_field: str | None
    releases: Mapping[str, _Release]  # agreement key -> compiled release for this event type


class PolicyEngine:
    """Decides and transforms events for every possible recipient, from a compiled charter.

    Construction compiles every event type of the catalog; a missing key raises `KeyringError`
    then, at start-up, never per event. `erasures` says which subjects were erased (the
    processor's erasure table); it is asked once per event that names a subject.
    """

    def __init__(self, charter: Charter, keyring: Keyring, erasures: ErasureState | None = None) -> None:
        self.erasures: ErasureState = erasures if erasures is not None else NoErasures()
        self._charter = charter
        self._keys = KeyringKeys(keyring)
        self._plans: dict[str, _EventPlan] = {
            event_type: self._compile_event(charter, event_type) for event_type in charter.catalog.events
        }

    @property
    def charter(self) -> Charter:
        return self._charter

    def decide(self, event: dict, consent: ConsentState, now: datetime) -> list[Decision]:
        """One decision per possible recipient of `event` (empty for an unknown event type)."""
        plan = self._plans.get(event.get("event_type"))  # type: ignore[arg-type]
        if plan is None:
            return []
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        deciders = plan.deciders
        if plan.subject_field is not None:
            try:
                subject = event.get(plan.subject_field)
                if subject and self.erasures.erased(subject):
                    deciders = plan.erased_deciders
            except Exception:  # noqa: BLE001 - an erasure look-up that fails counts as erased (fail closed)
                deciders = plan.erased_deciders
        return [decide(event, consent, now) for decide in deciders]

    def recipients_for(self, event_type: str) -> tuple[str, ...]:
        plan = self._plans.get(event_type)
        return plan.recipients if plan else ()

    def recipient_schema(self, agreement_id: str, event_type: str | None = None, version: int | None = None) -> dict[str, Any]:
        """Avro schema of the records an agreement releases for one of its event types.

        `event_type` may be left out when the agreement names one; `version` defaults to the
        version in force now, else the highest. Namespace `backbone.shared.<recipient>.<provider>`.
        """
        agreement = self._pick_version(agreement_id, version)
        if event_type is None:
            if len(agreement.event_types) != 1:
                raise AgreementError(f"agreement {agreement.key} shares {', '.join(agreement.event_types)}; name the event type")
            event_type = agreement.event_types[0]
        if event_type not in agreement.event_types:
            raise AgreementError(f"agreement {agreement.key} does not share {event_type}")
        release = self._plans[event_type].releases[agreement.key]
        schema = self._charter.catalog.events[event_type]
        return record_schema(agreement, schema, [copy.deepcopy(entry) for entry in release.schema_fields])

    def released_fields(self, agreement_id: str, event_type: str, version: int | None = None) -> tuple[str, ...]:
        agreement = self._pick_version(agreement_id, version)
        return self._plans[event_type].releases[agreement.key].released_fields

    def apply(self, agreement: Agreement | Mapping[str, Any], source: str = "agreements.changes") -> Agreement:
        """Add or replace an agreement version at runtime (validated; `AgreementError` if not)."""
        if not isinstance(agreement, Agreement):
            parsed, problems = parse_agreement(dict(agreement), source)
            if parsed is None:
                raise AgreementError(problems)
            agreement = parsed
        previous = [a for a in self._charter.agreements if a.id == agreement.id]
        self._swap(self._charter.with_agreement(agreement, source), [agreement, *previous])
        return agreement

    def set_status(self, agreement_id: str, version: int, status: Status) -> Agreement:
        """Suspend, revoke or (re)activate one agreement version at runtime."""
        charter = self._charter.with_status(agreement_id, version, status)
        changed = charter.get(agreement_id, version)
        self._swap(charter, [changed])
        return changed

    def use_keyring(self, keyring: Keyring) -> None:
        """Recompile every event type with a reloaded keyring (after `backbone keys rotate`)."""
        keys = KeyringKeys(keyring)
        plans = {event_type: self._compile_event(self._charter, event_type, keys) for event_type in self._charter.catalog.events}
        self._keys, self._plans = keys, plans

    def _swap(self, charter: Charter, touched: list[Agreement]) -> None:
        providers = {a.provider for a in touched}
        event_types = [t for t, s in charter.catalog.events.items() if s.provider in providers]
        plans = dict(self._plans)
        for event_type in event_types:
            plans[event_type] = self._compile_event(charter, event_type)
        # one assignment each: a concurrent decide() sees the old or the new charter, never a mix
        self._plans = plans
        self._charter = charter

    def _pick_version(self, agreement_id: str, version: int | None) -> Agreement:
        if version is not None:
            return self._charter.get(agreement_id, version)
        return self._charter.current(agreement_id)

    def _compile_event(self, charter: Charter, event_type: str, keys: KeyringKeys | None = None) -> _EventPlan:
        keys = keys or self._keys
        schema = charter.catalog.events[event_type]
        recipients = charter.recipients_of(schema.provider)
        deciders = []
        erased_deciders = []
        releases: dict[str, _Release] = {}
        for recipient in recipients:
            decide, decide_erased, compiled = _compile_recipient(recipient, charter.covering(event_type, recipient), schema, keys)
            deciders.append(decide)
            erased_deciders.append(decide_erased)
            releases.update(compiled)
        return _EventPlan(recipients, tuple(deciders), tuple(erased_deciders), schema.subject_field, releases)
