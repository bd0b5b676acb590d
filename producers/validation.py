"""Event validation compiled once per schema: a plain function per event type that checks types,
required fields, enum symbols, governance and the purpose vocabulary, and names the first bad field.

fastavro's own `validate` is exact but costs about as much as encoding; these checks are a few
isinstance tests per field. Problems are `(field path, reason)`; reasons name types, never values.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable, Collection
from typing import Any

from backbone.events.catalog import EventSchema

Problem = tuple[str, str]
Check = Callable[[Any], Problem | None]
Validator = Callable[[dict], Problem | None]

_MISSING = object()
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


def _got(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _integer(low: int, high: int, also: tuple[type, ...] = ()) -> Check:
    def check(value: Any) -> Problem | None:
        if isinstance(value, int) and not isinstance(value, bool):
            return None if low <= value <= high else ("", "integer out of range")
        if also and isinstance(value, also):
            return None
        return ("", f"expected an integer, got {_got(value)}")
    return check


def _string(value: Any) -> Problem | None:
    return None if isinstance(value, str) else ("", f"expected a string, got {_got(value)}")


def _uuid(value: Any) -> Problem | None:
    if isinstance(value, uuid.UUID):
        return None
    if isinstance(value, str) and len(value) == 36 and value[8] == value[13] == value[18] == value[23] == "-":
        return None
    return ("", f"expected a UUID string, got {_got(value)}" if not isinstance(value, str) else "not a UUID")


def _number(value: Any) -> Problem | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return None
    return ("", f"expected a number, got {_got(value)}")


def _boolean(value: Any) -> Problem | None:
    return None if isinstance(value, bool) else ("", f"expected a boolean, got {_got(value)}")


def _null(value: Any) -> Problem | None:
    return None if value is None else ("", f"expected null, got {_got(value)}")


def _bytes(value: Any) -> Problem | None:
    return None if isinstance(value, (bytes, bytearray)) else ("", f"expected bytes, got {_got(value)}")


_PRIMITIVES: dict[str, Check] = {
    "null": _null,
    "boolean": _boolean,
    "int": _integer(*_INT32),
    "long": _integer(*_INT64),
    "float": _number,
    "double": _number,
    "string": _string,
    "bytes": _bytes,
}
_LOGICAL: dict[tuple[str, str], Check] = {
    ("int", "date"): _integer(*_INT32, also=(datetime.date,)),
    ("long", "timestamp-millis"): _integer(*_INT64, also=(datetime.datetime,)),
    ("long", "timestamp-micros"): _integer(*_INT64, also=(datetime.datetime,)),
    ("string", "uuid"): _uuid,
}


def _at(name: str, problem: Problem) -> Problem:
    path, reason = problem
    return (name + ("." + path if path and not path.startswith("[") else path), reason)


class _Compiler:
    def __init__(self) -> None:
        self.named: dict[str, Check] = {}

    def compile(self, schema: Any, namespace: str = "") -> Check:
        if isinstance(schema, str):
            if schema in _PRIMITIVES:
                return _PRIMITIVES[schema]
            full = schema if "." in schema else f"{namespace}.{schema}" if namespace else schema
            named = self.named
            return lambda value: named[full](value) if full in named else named[schema](value)
        if isinstance(schema, list):
            return self._union(schema, namespace)
        kind = schema["type"]
        logical = schema.get("logicalType")
        if isinstance(kind, str) and (kind, logical) in _LOGICAL:
            return _LOGICAL[(kind, logical)]
        if kind == "record":
            return self._record(schema, namespace)
        if kind == "enum":
            return self._enum(schema, namespace)
        if kind == "array":
            return self._array(self.compile(schema["items"], namespace))
        if kind == "map":
            return self._map(self.compile(schema["values"], namespace))
        if kind == "fixed":
            size = schema["size"]
            check = lambda value: None if isinstance(value, bytes) and len(value) == size else ("", f"expected {size} bytes")  # noqa: E731
            self._name(schema, namespace, check)
            return check
        return self.compile(kind, namespace)

    def _name(self, schema: dict, namespace: str, check: Check) -> str:
        space = schema.get("namespace", namespace)
        name = schema["name"]
        full = name if "." in name else f"{space}.{name}" if space else name
        self.named[full] = check
        self.named.setdefault(name, check)
        return space

    def _enum(self, schema: dict, namespace: str) -> Check:
        symbols = frozenset(schema["symbols"])
        listing = ", ".join(schema["symbols"])

        def check(value: Any) -> Problem | None:
            if isinstance(value, str) and value in symbols:
                return None
            return ("", f"not one of {listing}")
        self._name(schema, namespace, check)
        return check

    def _array(self, item: Check) -> Check:
        def check(value: Any) -> Problem | None:
            if not isinstance(value, (list, tuple)):
                return ("", f"expected an array, got {_got(value)}")
            for index, element in enumerate(value):
                problem = item(element)
                if problem is not None:
                    return _at(f"[{index}]", problem)
            return None
        return check

    def _map(self, item: Check) -> Check:
        def check(value: Any) -> Problem | None:
            if not isinstance(value, dict):
                return ("", f"expected a map, got {_got(value)}")
            for key, element in value.items():
                if not isinstance(key, str):
                    return ("", "map keys must be strings")
                problem = item(element)
                if problem is not None:
                    return problem
            return None
        return check

    def _union(self, branches: list, namespace: str) -> Check:
        checks = [self.compile(branch, namespace) for branch in branches]
        names = ", ".join(b if isinstance(b, str) else b.get("name", b["type"]) if isinstance(b, dict) else "union"
                          for b in branches)
        nullable = "null" in branches

        def check(value: Any) -> Problem | None:
            if value is None and nullable:
                return None
            for branch in checks:
                if branch(value) is None:
                    return None
            return ("", f"expected one of {names}, got {_got(value)}")
        return check

    def _record(self, schema: dict, namespace: str) -> Check:
        fields: list[tuple[str, Check, bool]] = []

        def check(value: Any) -> Problem | None:
            if not isinstance(value, dict):
                return ("", f"expected a record, got {_got(value)}")
            for name, field_check, optional in fields:
                item = value.get(name, _MISSING)
                if item is _MISSING:
                    if optional:
                        continue
                    return (name, "missing")
                problem = field_check(item)
                if problem is not None:
                    return _at(name, problem)
            return None
        space = self._name(schema, namespace, check)  # before the fields: a record may refer to itself
        for item in schema["fields"]:
            fields.append((item["name"], self.compile(item["type"], space), "default" in item))
        return check

class _ExpressionCompiler:
    """Python source of one boolean expression that is True when a record surely fits the schema.

    Only exact types pass (an int for a double, a datetime for a timestamp, ... are left to the
    precise checks), so False means "ask `_Compiler`", never "invalid".
    """

    def __init__(self) -> None:
        self.constants: dict[str, Any] = {"_MISSING": _MISSING, "_date": datetime.date}
        self.named: dict[str, dict] = {}
        self._count = 0

    def _var(self) -> str:
        self._count += 1
        return f"v{self._count}"

    def _constant(self, value: Any) -> str:
        name = f"c{len(self.constants)}"
        self.constants[name] = value
        return name

    def expression(self, schema: Any, var: str, namespace: str = "") -> str:  # noqa: C901, PLR0911 - one case per Avro type
        if isinstance(schema, str):
            simple = {
                "null": f"{var} is None",
                "boolean": f"{var}.__class__ is bool",
                "int": f"({var}.__class__ is int and {_INT32[0]} <= {var} <= {_INT32[1]})",
                "long": f"({var}.__class__ is int and {_INT64[0]} <= {var} <= {_INT64[1]})",
                "float": f"{var}.__class__ is float",
                "double": f"{var}.__class__ is float",
                "string": f"{var}.__class__ is str",
                "bytes": f"{var}.__class__ is bytes",
            }
            if schema in simple:
                return simple[schema]
            full = schema if "." in schema else f"{namespace}.{schema}" if namespace else schema
            named = self.named.get(full) or self.named.get(schema)
            return self.expression(named, var, namespace) if named is not None and named["type"] != "record" else "False"
        if isinstance(schema, list):
            return "(" + " or ".join(self.expression(branch, var, namespace) for branch in schema) + ")"
        kind, logical = schema["type"], schema.get("logicalType")
        if logical == "uuid" and kind == "string":
            return (f"({var}.__class__ is str and len({var}) == 36 and "
                    f"{var}[8] == {var}[13] == {var}[18] == {var}[23] == '-')")
        if logical == "date" and kind == "int":
            return f"({var}.__class__ is _date or {self.expression('int', var)})"
        if kind == "enum":
            self._remember(schema, namespace)
            return f"{var} in {self._constant(frozenset(schema['symbols']))}"
        if kind == "array":
            item = self._var()
            return (f"({var}.__class__ is list and all({self.expression(schema['items'], item, namespace)} "
                    f"for {item} in {var}))")
        if kind == "record":
            space = self._remember(schema, namespace)
            parts = [f"{var}.__class__ is dict"]
            for field in schema["fields"]:
                item = self._var()
                check = self.expression(field["type"], item, space)
                if "default" in field:
                    parts.append(f"(({item} := {var}.get({field['name']!r}, _MISSING)) is _MISSING or {check})")
                else:
                    parts.append(f"(({item} := {var}.get({field['name']!r}, _MISSING)) is not _MISSING and {check})")
            return "(" + " and ".join(parts) + ")"
        if isinstance(kind, (str, list, dict)) and kind not in ("map", "fixed"):
            return self.expression(kind, var, namespace)
        return "False"

    def _remember(self, schema: dict, namespace: str) -> str:
        space = schema.get("namespace", namespace)
        name = schema["name"]
        self.named[name if "." in name else f"{space}.{name}" if space else name] = schema
        self.named.setdefault(name, schema)
        return space

    def function(self, schema: dict) -> Callable[[dict], bool]:
        source = f"def surely_fits(v0):\n    try:\n        return {self.expression(schema, 'v0')}\n    except TypeError:\n        return False\n"
        scope = dict(self.constants)
        exec(compile(source, f"<validator {schema.get('name', '?')}>", "exec"), scope)  # noqa: S102 - source built from the schema only
        return scope["surely_fits"]


def compile_validator(
    schema: EventSchema,
    purposes: Collection[str],
    vocabulary_fields: Collection[str] = (),
    *,
    check_types: bool = True,
) -> Validator:
    """A function `record -> (field path, reason) | None` for `schema`: Avro types, unknown fields,
    governance (at least one purpose, each in `purposes`; a consent basis needs a consent_id) and,
    for `vocabulary_fields`, values from the purpose vocabulary.

    `check_types=False` leaves the Avro types out, for records a strict encoder has just accepted.
    """
    record_check = _Compiler().compile(schema.avro)
    surely_fits = _ExpressionCompiler().function(schema.avro)
    field_names = frozenset(schema.fields)
    vocabulary = frozenset(purposes)
    extra_vocabulary = tuple(vocabulary_fields)
    subject_field = schema.subject_field
    subject_required = subject_field is not None and not schema.fields[subject_field].nullable

    def validate(record: dict) -> Problem | None:
        if not isinstance(record, dict):
            return ("", f"expected a record (dict), got {_got(record)}")
        if not record.keys() <= field_names:
            unknown = sorted(str(name) for name in record.keys() - field_names)
            return (unknown[0], "not a field of the schema")
        if check_types and not surely_fits(record):
            problem = record_check(record)
            if problem is not None:
                return problem
        governance = record["governance"]
        granted = governance["purposes"]
        if not granted:
            return ("governance.purposes", "at least one purpose is required")
        if not vocabulary.issuperset(granted):
            index = next(i for i, purpose in enumerate(granted) if purpose not in vocabulary)
            return (f"governance.purposes[{index}]", "not in the purpose vocabulary (schemas/purposes.yaml)")
        if governance["lawful_basis"] == "consent" and not governance.get("consent_id"):
            return ("governance.consent_id", "required when the lawful basis is consent")
        for name in extra_vocabulary:
            if record[name] not in vocabulary:
                return (name, "not in the purpose vocabulary (schemas/purposes.yaml)")
        if subject_required and not record[subject_field]:
            return (subject_field, "must not be empty (it identifies the data subject)")
        return None

    return validate
