"""A compiled Avro decoder per writer schema: the processor's router reads raw events with it.

The counterpart of `backbone.events.encoder`: one straight-line function per writer schema, returning
exactly what fastavro's `schemaless_reader` returns (dicts, lists, uuid.UUID (`TextUUID`), tz-aware datetimes,
dates, enum symbols), ~1.6x as fast. It is a fast path only: on any doubt (bytes it would read
differently from fastavro, a varint over 64 bits, a boolean byte other than 0 or 1, a negative size
or enum index, bytes left over or missing) it raises, and the caller decodes with fastavro, which
gives the record or the error it always gave.
"""

from __future__ import annotations

import datetime
import struct
import uuid
from collections.abc import Callable
from typing import Any

from backbone.events.encoder import _EPOCH, _PRIMITIVES, _Unsupported

CompiledDecoder = Callable[[bytes, int], tuple[dict, int]]

_DAYS_SHIFT = datetime.date(1970, 1, 1).toordinal()
_unpack_double = struct.Struct("<d").unpack_from
_unpack_float = struct.Struct("<f").unpack_from
# fastavro's logical types; those not read here make the whole schema fall back to fastavro.
_FASTAVRO_LOGICAL = {"bytes-decimal", "fixed-decimal", "int-date", "int-time-millis", "long-local-timestamp-micros",
                     "long-local-timestamp-millis", "long-time-micros", "long-timestamp-micros", "long-timestamp-millis",
                     "string-uuid"}
_READ_LOGICAL = {"int-date", "long-timestamp-millis", "long-timestamp-micros", "string-uuid"}


def _read_long(data: bytes, pos: int) -> tuple[int, int]:
    """A zig-zag varint at `pos` of at most 64 bits: (value, position after it)."""
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 64 bits")
    if result >> 64:
        raise ValueError("varint longer than 64 bits")
    return (result >> 1) ^ -(result & 1), pos


_UUID = uuid.UUID
_UUID_SAFE = uuid.SafeUUID.unknown
_new = object.__new__
_set = object.__setattr__
_timedelta = datetime.timedelta


class TextUUID(uuid.UUID):
    """A `uuid.UUID` that keeps its canonical text: equal to, hashed as and read like the UUID of
    the same value, but `str()` returns the text it was read from instead of formatting 128 bits
    again. The processor turns an event id into text several times per event (the audit record, a
    recipient event id per agreement): `UUID.__str__` was ~6% of the router's time (py-spy)."""

    __slots__ = ("_text",)

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:  # as uuid.UUID's: a record reads the same, whichever decoder read it
        return f"UUID({self._text!r})"

    def __reduce__(self) -> tuple[type[uuid.UUID], tuple[str]]:  # copied or pickled: a plain uuid.UUID
        return _UUID, (self._text,)


def _read_uuid(text: str) -> uuid.UUID:
    """`uuid.UUID(text)` (what fastavro returns), built directly for the canonical 36-character form.
    Where `uuid.UUID` would strip "urn:", "uuid:" or braces first, `int()` refuses the text and the
    caller falls back to fastavro; otherwise both parse the same 32 digits. Canonical text (hex
    digits, dashes at 8, 13, 18, 23) gives a `TextUUID` holding it in lower case, as `str()` writes it."""
    digits = text.replace("-", "")
    if len(text) != 36 or len(digits) != 32:
        return _UUID(text)
    if text[8] == text[13] == text[18] == text[23] == "-" and digits.isascii() and digits.isalnum():
        value = _new(TextUUID)
        _set(value, "int", int(digits, 16))  # ValueError for a letter beyond f, as uuid.UUID raises
        _set(value, "_text", text.lower())
    else:
        value = _new(_UUID)
        _set(value, "int", int(digits, 16))  # the two slots UUID.__init__ sets
    _set(value, "is_safe", _UUID_SAFE)
    return value


def _read_timestamp_millis(millis: int) -> datetime.datetime:
    return _EPOCH + _timedelta(0, 0, 0, millis)  # fastavro: epoch + timedelta(microseconds=millis * 1000)


def _read_timestamp_micros(micros: int) -> datetime.datetime:
    return _EPOCH + _timedelta(0, 0, micros)  # fastavro: epoch + timedelta(microseconds=micros)


def _read_date(days: int) -> datetime.date:
    return datetime.date.fromordinal(days + _DAYS_SHIFT)


class _Reader:
    """Emits the statements of one decode function for a schema."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.constants: dict[str, Any] = {"_read_long": _read_long, "_unpack_double": _unpack_double,
                                          "_unpack_float": _unpack_float}
        self.named: dict[str, dict] = {}
        self._open: set[str] = set()  # records being emitted: a reference back to one is recursion
        self._vars = 0

    def var(self) -> str:
        self._vars += 1
        return f"v{self._vars}"

    def constant(self, value: Any) -> str:
        name = f"c{len(self.constants)}"
        self.constants[name] = value
        return name

    def remember(self, schema: dict, namespace: str) -> tuple[str, str]:
        space = schema.get("namespace", namespace)
        name = schema["name"]
        full = name if "." in name else f"{space}.{name}" if space else name
        self.named[full] = schema
        return full, (full.rpartition(".")[0] if "." in name else space)

    def long(self, target: str, indent: str) -> None:
        add = self.lines.append
        add(f"{indent}b = data[pos]")
        add(f"{indent}if b < 128:")
        add(f"{indent}    {target} = (b >> 1) ^ -(b & 1)")
        add(f"{indent}    pos += 1")
        add(f"{indent}else:")
        add(f"{indent}    {target}, pos = _read_long(data, pos)")

    def sized(self, target: str, indent: str, text: bool) -> None:
        add = self.lines.append
        self.long("n", indent)
        add(f"{indent}if n < 0: raise ValueError('negative size')")
        add(f"{indent}e = pos + n")
        add(f"{indent}{target} = data[pos:e]{'.decode()' if text else ''}")
        add(f"{indent}pos = e")

    def emit(self, schema: Any, target: str, namespace: str, indent: str) -> None:  # noqa: C901 - one case per Avro type
        add = self.lines.append
        if isinstance(schema, str) and schema not in _PRIMITIVES:
            full = schema if "." in schema else f"{namespace}.{schema}" if namespace else schema
            resolved = self.named.get(full) or self.named.get(schema)
            if resolved is None:
                raise _Unsupported(f"unknown type {schema}")
            schema = resolved
        if isinstance(schema, list):
            index = self.var()
            self.long(index, indent)
            for position, branch in enumerate(schema):
                add(f"{indent}{'if' if position == 0 else 'elif'} {index} == {position}:")
                self.emit(branch, target, namespace, indent + "    ")
            add(f"{indent}else: raise ValueError('union index')")
            return
        if isinstance(schema, dict):
            kind = schema.get("type")
            if kind == "record":
                full, space = self.remember(schema, namespace)
                if full in self._open:
                    raise _Unsupported("recursive record")
                self._open.add(full)
                fields = []
                for field in schema["fields"]:
                    item = self.var()
                    self.emit(field["type"], item, space, indent)
                    fields.append(f"{field['name']!r}: {item}")
                self._open.discard(full)
                add(f"{indent}{target} = {{{', '.join(fields)}}}")
                return
            if kind == "enum":
                self.remember(schema, namespace)
                symbols = self.constant(tuple(schema["symbols"]))
                self.long("i", indent)
                add(f"{indent}if i < 0: raise ValueError('enum index')")
                add(f"{indent}{target} = {symbols}[i]")
                return
            if kind == "fixed":
                self.remember(schema, namespace)
                if f"fixed-{schema.get('logicalType')}" in _FASTAVRO_LOGICAL:
                    raise _Unsupported("fixed logical type")
                size = int(schema["size"])
                add(f"{indent}e = pos + {size}")
                add(f"{indent}if e > len(data): raise ValueError('short fixed')")
                add(f"{indent}{target} = data[pos:e]")
                add(f"{indent}pos = e")
                return
            if kind in ("array", "map"):
                count, item = self.var(), self.var()
                add(f"{indent}{target} = {'[]' if kind == 'array' else '{}'}")
                self.long(count, indent)
                add(f"{indent}while {count}:")
                inner = indent + "    "
                add(f"{inner}if {count} < 0:")
                add(f"{inner}    {count} = -{count}")
                self.long("_", inner + "    ")  # the block's size in bytes, not needed
                # Items of a type that takes no bytes would let a count loop without reading: refuse
                # any count beyond the bytes left (fastavro then reads the rare valid case).
                add(f"{inner}if {count} > len(data) - pos: raise ValueError('count')")
                add(f"{inner}for _ in range({count}):")
                body = inner + "    "
                if kind == "map":
                    key = self.var()
                    self.sized(key, body, text=True)
                    self.emit(schema["values"], item, namespace, body)
                    add(f"{body}{target}[{key}] = {item}")
                else:
                    self.emit(schema["items"], item, namespace, body)
                    add(f"{body}{target}.append({item})")
                self.long(count, inner)
                return
            if isinstance(kind, (dict, list)):
                self.emit(kind, target, namespace, indent)  # {"type": {...}}
                return
            if kind in _PRIMITIVES:
                logical = f"{kind}-{schema.get('logicalType')}"
                if logical in _READ_LOGICAL:
                    self.emit(kind, target, namespace, indent)
                    read = {"int-date": _read_date, "long-timestamp-millis": _read_timestamp_millis,
                            "long-timestamp-micros": _read_timestamp_micros, "string-uuid": _read_uuid}[logical]
                    add(f"{indent}{target} = {self.constant(read)}({target})")
                    return
                if logical in _FASTAVRO_LOGICAL:
                    raise _Unsupported(f"logical type {logical}")
                schema = kind  # unknown logical types read as the base type, as fastavro does
            else:
                raise _Unsupported(str(kind))
        if schema == "null":
            add(f"{indent}{target} = None")
        elif schema in ("int", "long"):
            self.long(target, indent)
        elif schema == "string":
            self.sized(target, indent, text=True)
        elif schema == "bytes":
            self.sized(target, indent, text=False)
            add(f"{indent}if pos > len(data): raise ValueError('short bytes')")
        elif schema == "boolean":
            add(f"{indent}b = data[pos]")
            add(f"{indent}pos += 1")
            add(f"{indent}if b > 1: raise ValueError('boolean byte')")
            add(f"{indent}{target} = b == 1")
        elif schema == "double":
            add(f"{indent}{target} = _unpack_double(data, pos)[0]")
            add(f"{indent}pos += 8")
        elif schema == "float":
            add(f"{indent}{target} = _unpack_float(data, pos)[0]")
            add(f"{indent}pos += 4")
        else:
            raise _Unsupported(str(schema))


def compile_decoder(avro: Any) -> CompiledDecoder | None:
    """`(data, pos) -> (record, position after it)` reading the Avro body at `pos` of `data` written
    with `avro`, or None when the schema has a shape left to fastavro (recursive records, decimal
    and time logical types). Raises on anything it does not read exactly as fastavro would: the
    caller then decodes with fastavro."""
    reader = _Reader()
    try:
        reader.emit(avro, "record", "", "    ")
    except Exception:  # noqa: BLE001 - _Unsupported, or a schema shape nobody expected: fastavro reads it
        return None
    source = "def decode(data, pos):\n" + "\n".join(reader.lines) + "\n    return record, pos\n"
    scope = dict(reader.constants)
    exec(compile(source, f"<decoder {avro.get('name', '?') if isinstance(avro, dict) else '?'}>", "exec"), scope)  # noqa: S102 - from the schema only
    return scope["decode"]
