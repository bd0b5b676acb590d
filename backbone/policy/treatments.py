"""Field treatments: a registry of small factories, found by name and compiled once per agreement.

A factory takes the treatment's parameters from the agreement, the field's schema and a scope
(sharing domain, provider, keys), checks that the treatment fits the field's type, and returns a
`CompiledTreatment`: the per-value function for the hot path and the Avro type it produces.
Adding a treatment is one factory and one `TREATMENTS` entry.

    national_id: pseudonymise              # HMAC-SHA256 under the domain key -> "k3.q1Zx..."
    bank_account: encrypt                  # AES-SIV under the provider key, reversible by the provider
    date_of_birth: {generalise: year}      # date -> 1984 (int); `month` -> "1984-07"
    occurred_at: {generalise: day}         # timestamp -> midnight UTC of its day (`hour`: its hour)
    postcode: {generalise: {prefix: 4}}    # string -> first 4 characters
    monthly_amount: {generalise: {bands: [0, 500, 1000]}}   # number -> "<0", "0-500", "500-1000", ">=1000"
    iban: {mask: 4}                        # keep the last 4 characters, "*" for the rest
    name: drop                             # not released (the same as leaving it out)
"""

from __future__ import annotations

import copy
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from backbone.events.catalog import FieldInfo


class TreatmentMisfit(ValueError):
    """The treatment or its parameters do not fit the field; the message says how to fix it."""


class KeySource(Protocol):
    """Where `pseudonymise` and `encrypt` get their keyed functions (the engine's keyring)."""

    def pseudonymiser(self, domain: str) -> tuple[Callable[[Any], str], str]: ...
    def encryptor(self, provider: str, domain: str, field: str) -> tuple[Callable[[Any], str], str]: ...


@dataclass(slots=True, frozen=True)
class TreatmentScope:
    """What a factory may use besides the field: the agreement's domain, provider and recipient,
    and keys.

    `keys` is None when the loader only validates an agreement (no key is needed to check fit).
    """

    domain: str | None
    provider: str
    keys: KeySource | None = None
    recipient: str = ""

    @property
    def binding(self) -> str:
        """What encryption binds a token to: the sharing domain, else the recipient itself."""
        return self.domain or f"@{self.recipient}"


@dataclass(slots=True, frozen=True)
class CompiledTreatment:
    apply: Callable[[Any], Any] | None  # None: release the value as it is
    avro_type: Any  # type of the released value, without the null branch
    released: bool = True
    key_id: str | None = None
    description: str = ""


Factory = Callable[[Any, FieldInfo, TreatmentScope], CompiledTreatment]


def base_type(field: FieldInfo) -> Any:
    """The field's type without the `null` branch of a nullable union."""
    avro_type = field.type
    if isinstance(avro_type, list):
        branches = [branch for branch in avro_type if branch != "null"]
        return branches[0] if len(branches) == 1 else branches
    return avro_type


def type_kind(avro_type: Any) -> str:
    """string, enum, int, long, float, double, boolean, date, timestamp, or other."""
    if isinstance(avro_type, dict):
        logical = avro_type.get("logicalType")
        if logical == "date":
            return "date"
        if logical in {"timestamp-millis", "timestamp-micros"}:
            return "timestamp"
        if avro_type.get("type") == "enum":
            return "enum"
        return type_kind(avro_type.get("type")) if isinstance(avro_type.get("type"), str) else "other"
    if avro_type in {"string", "int", "long", "float", "double", "boolean"}:
        return avro_type
    return "other"


NUMBER_KINDS = frozenset({"int", "long", "float", "double"})
IDENTIFIER_KINDS = frozenset({"string", "enum", "int", "long"})


def _require_kind(name: str, field: FieldInfo, kinds: frozenset[str], what: str) -> str:
    kind = type_kind(base_type(field))
    if kind not in kinds:
        raise TreatmentMisfit(f"{name} needs {what}, but the field is {kind}")
    return kind


def _no_params(name: str, params: Any) -> None:
    if params not in (None, {}, True):
        raise TreatmentMisfit(f"{name} takes no parameters; write `{name}`")


def keep(params: Any, field: FieldInfo, scope: TreatmentScope) -> CompiledTreatment:
    _no_params("keep", params)
    return CompiledTreatment(None, copy.deepcopy(base_type(field)), description="kept as provided")


def drop(params: Any, field: FieldInfo, scope: TreatmentScope) -> CompiledTreatment:
    _no_params("drop", params)
    return CompiledTreatment(None, None, released=False)


def pseudonymise(params: Any, field: FieldInfo, scope: TreatmentScope) -> CompiledTreatment:
    _no_params("pseudonymise", params)
    _require_kind("pseudonymise", field, IDENTIFIER_KINDS, "a string, enum or integer field")
    if not scope.domain:
        raise TreatmentMisfit("pseudonymise needs the agreement's sharing `domain`")
    description = f"pseudonym: HMAC-SHA256 under the {scope.domain} domain key"
    if scope.keys is None:
        return CompiledTreatment(None, "string", description=description)
    function, key_id = scope.keys.pseudonymiser(scope.domain)
    return CompiledTreatment(function, "string", key_id=key_id, description=description)


def encrypt(params: Any, field: FieldInfo, scope: TreatmentScope) -> CompiledTreatment:
    _no_params("encrypt", params)
    _require_kind("encrypt", field, IDENTIFIER_KINDS, "a string, enum or integer field")
    description = (f"AES-SIV token under the {scope.provider} provider key, bound to {scope.binding} and the field "
                   f"(reversible by {scope.provider} only)")
    if scope.keys is None:
        return CompiledTreatment(None, "string", description=description)
    function, key_id = scope.keys.encryptor(scope.provider, scope.binding, field.name)
    return CompiledTreatment(function, "string", key_id=key_id, description=description)


def _to_year(value: Any) -> int:
    return value.year


def _to_day(value: Any) -> Any:
    return value.replace(hour=0, minute=0, second=0, microsecond=0)


def _to_hour(value: Any) -> Any:
    return value.replace(minute=0, second=0, microsecond=0)


def _to_month(value: Any) -> str:
    return f"{value.year:04d}-{value.month:02d}"


def _edge_label(edge: float) -> str:
    return str(int(edge)) if float(edge).is_integer() else f"{edge:g}"


def _band_function(edges: list[float]) -> Callable[[Any], str]:
    bounds = tuple(edges)
    labels = (f"<{_edge_label(bounds[0])}",) + tuple(
        f"{_edge_label(low)}-{_edge_label(high)}" for low, high in zip(bounds, bounds[1:])
    ) + (f">={_edge_label(bounds[-1])}",)

    def band(value: Any) -> str:
        return labels[bisect_right(bounds, value)]

    return band


def _prefix_function(length: int) -> Callable[[Any], str]:
    def prefix(value: Any) -> str:
        return value[:length]

    return prefix


def generalise(params: Any, field: FieldInfo, scope: TreatmentScope) -> CompiledTreatment:
    """`year` / `month` (dates, timestamps), `day` / `hour` (timestamps, kept as timestamps),
    `{prefix: N}` (strings), `{bands: [edges]}` (numbers)."""
    if isinstance(params, dict) and set(params) == {"to"}:
        params = params["to"]
    if params in ("day", "hour"):
        _require_kind(f"generalise to the {params}", field, frozenset({"timestamp"}), "a timestamp field")
        function = _to_day if params == "day" else _to_hour
        return CompiledTreatment(function, copy.deepcopy(base_type(field)), description=f"truncated to the {params} (UTC)")
    if params in ("year", "month"):
        _require_kind(f"generalise to {params}", field, frozenset({"date", "timestamp"}), "a date or timestamp field")
        if params == "year":
            return CompiledTreatment(_to_year, "int", description="generalised to the year")
        return CompiledTreatment(_to_month, "string", description="generalised to the month, YYYY-MM")
    if isinstance(params, dict) and set(params) == {"prefix"}:
        length = params["prefix"]
        if not isinstance(length, int) or isinstance(length, bool) or length < 1:
            raise TreatmentMisfit("generalise prefix needs a whole number of characters >= 1, e.g. {prefix: 4}")
        _require_kind("generalise to a prefix", field, frozenset({"string"}), "a string field")
        return CompiledTreatment(_prefix_function(length), "string", description=f"first {length} characters")
    if isinstance(params, dict) and set(params) == {"bands"}:
        edges = params["bands"]
        if (
            not isinstance(edges, list)
            or not edges
            or not all(isinstance(edge, int | float) and not isinstance(edge, bool) for edge in edges)
            or any(low >= high for low, high in zip(edges, edges[1:]))
        ):
            raise TreatmentMisfit("generalise bands needs a list of increasing numbers, e.g. {bands: [0, 1000, 2500]}")
        _require_kind("generalise to bands", field, NUMBER_KINDS, "a number field")
        return CompiledTreatment(_band_function(edges), "string", description=f"band between edges {edges}")
    raise TreatmentMisfit(
        "generalise takes `year`, `month`, `day`, `hour`, {prefix: N} or {bands: [edges]}, e.g. {generalise: year}"
    )


def mask(params: Any, field: FieldInfo, scope: TreatmentScope) -> CompiledTreatment:
    """Keep the last N characters, `*` for the rest; values no longer than N are masked whole."""
    if isinstance(params, dict) and set(params) == {"keep_last"}:
        params = params["keep_last"]
    if not isinstance(params, int) or isinstance(params, bool) or params < 0:
        raise TreatmentMisfit("mask needs the number of trailing characters to keep, e.g. {mask: 4}")
    _require_kind("mask", field, frozenset({"string", "int", "long"}), "a string or integer field")
    keep_last = params

    def masked(value: Any) -> str:
        text = value if isinstance(value, str) else str(value)
        if len(text) <= keep_last:
            return "*" * len(text)
        return "*" * (len(text) - keep_last) + (text[-keep_last:] if keep_last else "")

    return CompiledTreatment(masked, "string", description=f"masked but the last {keep_last} characters")


TREATMENTS: dict[str, Factory] = {
    "keep": keep,
    "pseudonymise": pseudonymise,
    "encrypt": encrypt,
    "generalise": generalise,
    "mask": mask,
    "drop": drop,
}


def compile_treatment(name: str, params: Any, field: FieldInfo, scope: TreatmentScope) -> CompiledTreatment:
    """Look the treatment up by name and compile it for `field`; `TreatmentMisfit` when it does not fit."""
    factory = TREATMENTS.get(name)
    if factory is None:
        raise TreatmentMisfit(f"unknown treatment {name!r}; use one of {', '.join(TREATMENTS)}")
    return factory(params, field, scope)
