"""A compiled Avro encoder per schema: the fast path of `backbone.events.serde.Encoder` and the SDK, byte-for-byte what
`backbone.events.serde.Encoder` (fastavro) writes, several times faster because each schema becomes one
straight-line Python function (no per-call schema walk, no logical-type preprocessing pass).

It is strict: any value it is not sure about (a bool or float for an int, an int out of range,
an unknown enum symbol, a missing field, an unexpected type) raises, and the SDK then runs the
precise validator for the error message, or the serde encoder for rare exact-but-unusual values.
Schemas with shapes it does not compile (maps, fixed, multi-branch unions) return None: the SDK
then always uses the serde encoder. Arrays of records compile to a function per record type.

Reading has its generated counterpart in `backbone.events.decoder`.
"""

from __future__ import annotations

import datetime
import struct
import uuid
from collections.abc import Callable
from typing import Any

CompiledEncoder = Callable[[dict], bytes]

_EPOCH_DATE = datetime.date(1970, 1, 1)
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_pack_double = struct.Struct("<d").pack
_pack_float = struct.Struct("<f").pack


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# Zig-zag varints of small non-negative numbers (string lengths, enum indexes), precomputed, and
# of every zig-zag value below 2**16 (ints in [-32768, 32767]: dates from 1880 to 2059 in days).
_SMALL = tuple(_varint_bytes(n << 1) for n in range(4096))
_ZIGZAG = tuple(_varint_bytes(z) for z in range(1 << 16))


def _long(value: int) -> bytes:
    zigzag = (value << 1) ^ (value >> 63)
    return _ZIGZAG[zigzag] if zigzag < 65536 else _varint_bytes(zigzag)


def _int32(value: Any) -> bytes:
    if value.__class__ is not int or not _INT32[0] <= value <= _INT32[1]:
        raise TypeError("not an int32")
    return _long(value)


def _int64(value: Any) -> bytes:
    if value.__class__ is not int or not _INT64[0] <= value <= _INT64[1]:
        raise TypeError("not an int64")
    return _long(value)


def _string(value: str) -> bytes:
    data = value.encode()  # AttributeError for anything but str
    size = len(data)
    return (_SMALL[size] if size < 4096 else _long(size)) + data


def _uuid(value: Any) -> bytes:
    if isinstance(value, uuid.UUID):  # the decoder's TextUUID too
        value = str(value)
    elif not (value.__class__ is str and len(value) == 36 and value[8] == value[13] == value[18] == value[23] == "-"):
        raise TypeError("not a UUID")
    return _SMALL[36] + value.encode()


def _double(value: Any) -> bytes:
    if value.__class__ is float or value.__class__ is int:
        return _pack_double(value)
    raise TypeError("not a double")


def _float(value: Any) -> bytes:
    if value.__class__ is float or value.__class__ is int:
        return _pack_float(value)
    raise TypeError("not a float")


def _boolean(value: Any) -> bytes:
    if value is True:
        return b"\x01"
    if value is False:
        return b"\x00"
    raise TypeError("not a boolean")


def _bytes(value: Any) -> bytes:
    if value.__class__ is not bytes:
        raise TypeError("not bytes")
    return _long(len(value)) + value


def _date(value: Any) -> bytes:
    if value.__class__ is datetime.date:
        return _long((value - _EPOCH_DATE).days)
    return _int32(value)


def _timestamp_millis(value: Any) -> bytes:
    if value.__class__ is int:
        return _int64(value)
    if value.__class__ is datetime.datetime and value.tzinfo is not None:
        delta = value - _EPOCH
        return _long(delta.days * 86_400_000 + delta.seconds * 1_000 + delta.microseconds // 1_000)
    raise TypeError("not a timestamp")


def _null(value: Any) -> bytes:
    if value is not None:
        raise TypeError("not null")
    return b""


_PRIMITIVES: dict[str, Callable[[Any], bytes]] = {
    "null": _null, "boolean": _boolean, "int": _int32, "long": _int64, "float": _float, "double": _double,
    "string": _string, "bytes": _bytes,
}
_LOGICAL: dict[tuple[str, str], Callable[[Any], bytes]] = {
    ("string", "uuid"): _uuid, ("int", "date"): _date, ("long", "timestamp-millis"): _timestamp_millis,
}


class _Unsupported(Exception):
    pass


class _Generator:
    """Emits the statements of one encode function for a schema."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.constants: dict[str, Any] = {"_SMALL": _SMALL, "_long": _long}
        self._string = self.constant(_string)
        self.named: dict[str, dict] = {}
        self._vars = 0

    def var(self) -> str:
        self._vars += 1
        return f"v{self._vars}"

    def constant(self, value: Any) -> str:
        name = f"c{len(self.constants)}"
        self.constants[name] = value
        return name

    def function_for(self, schema: Any, namespace: str) -> str:
        """Name of a constant function encoding `schema` (for array items and union branches)."""
        if isinstance(schema, str) and schema in _PRIMITIVES:
            return self.constant(_PRIMITIVES[schema])
        if isinstance(schema, dict) and (schema.get("type"), schema.get("logicalType")) in _LOGICAL:
            return self.constant(_LOGICAL[(schema["type"], schema["logicalType"])])
        if isinstance(schema, dict) and schema.get("type") == "enum":
            self.remember(schema, namespace)
            indexes = {symbol: _SMALL[index] for index, symbol in enumerate(schema["symbols"])}
            return self.constant(indexes.__getitem__)
        if isinstance(schema, dict) and schema.get("type") == "record":
            # An array of records (the audit record's decisions): its own straight-line function.
            sub = _Generator()
            sub.named = self.named
            sub.emit(schema, "record", namespace, "    ")
            source = "def encode(record):\n    parts = []\n    a = parts.append\n" + "\n".join(sub.lines) \
                + "\n    return b''.join(parts)\n"
            scope = dict(sub.constants)
            exec(compile(source, f"<encoder {schema.get('name', '?')}>", "exec"), scope)  # noqa: S102 - from the schema only
            return self.constant(scope["encode"])
        raise _Unsupported(str(schema))

    def remember(self, schema: dict, namespace: str) -> str:
        space = schema.get("namespace", namespace)
        name = schema["name"]
        self.named[name if "." in name else f"{space}.{name}" if space else name] = schema
        return space

    def emit(self, schema: Any, value: str, namespace: str, indent: str) -> None:  # noqa: C901 - one case per Avro type
        add = self.lines.append
        if isinstance(schema, str) and schema not in _PRIMITIVES:
            full = schema if "." in schema else f"{namespace}.{schema}" if namespace else schema
            schema = self.named.get(full) or self.named.get(schema)
            if schema is None or schema.get("type") == "record":
                raise _Unsupported("named reference")  # recursive records stay on the serde path
        if isinstance(schema, list):
            branches = [b for b in schema if b != "null"]
            if len(schema) != 2 or len(branches) != 1:
                raise _Unsupported("union")
            null_index = schema.index("null")
            encode = self.function_for(branches[0], namespace)
            null_tag, value_tag = _SMALL[null_index], _SMALL[1 - null_index]
            add(f"{indent}a({self.constant(null_tag)} if {value} is None else {self.constant(value_tag)} + {encode}({value}))")
            return
        if isinstance(schema, dict) and schema.get("type") == "record":
            space = self.remember(schema, namespace)
            record = self.var()
            add(f"{indent}{record} = {value}")
            add(f"{indent}if {record}.__class__ is not dict: raise TypeError('not a record')")
            for field in schema["fields"]:
                item = self.var()
                if "default" in field:
                    add(f"{indent}{item} = {record}.get({field['name']!r}, {self.constant(field['default'])})")
                else:
                    add(f"{indent}{item} = {record}[{field['name']!r}]")
                self.emit(field["type"], item, space, indent)
            return
        if isinstance(schema, dict) and schema.get("type") == "array":
            encode = self.function_for(schema["items"], namespace)
            items = self.var()
            add(f"{indent}{items} = {value}")
            add(f"{indent}if {items}.__class__ is not list and {items}.__class__ is not tuple: raise TypeError('not an array')")
            add(f"{indent}if {items}:")
            add(f"{indent}    a(_long(len({items})))")
            add(f"{indent}    for item in {items}: a({encode}(item))")
            add(f"{indent}a(b'\\x00')")
            return
        if isinstance(schema, dict) and isinstance(schema.get("type"), str) and schema["type"] in _PRIMITIVES \
                and (schema["type"], schema.get("logicalType")) not in _LOGICAL:
            schema = schema["type"]  # {"type": "string"} and unknown logical types encode as the base type
        if schema == "string":
            # Inlined: the commonest field type, one function call saved per field.
            add(f"{indent}{value} = {value}.encode()")
            add(f"{indent}a(_SMALL[len({value})] if len({value}) < 4096 else _long(len({value})))")
            add(f"{indent}a({value})")
            return
        add(f"{indent}a({self.function_for(schema, namespace)}({value}))")


def compile_encoder(avro: dict, schema_id: int) -> CompiledEncoder | None:
    """`record -> Confluent wire-format bytes` for `avro` under `schema_id`, or None when the schema
    has a shape this compiler leaves to the serde encoder."""
    generator = _Generator()
    generator.constants["_HEADER"] = b"\x00" + schema_id.to_bytes(4, "big")
    try:
        generator.emit(avro, "record", "", "    ")
    except _Unsupported:
        return None
    source = "def encode(record):\n    parts = [_HEADER]\n    a = parts.append\n" + "\n".join(generator.lines) \
        + "\n    return b''.join(parts)\n"
    scope = dict(generator.constants)
    exec(compile(source, f"<encoder {avro.get('name', '?')}>", "exec"), scope)  # noqa: S102 - source built from the schema only
    return scope["encode"]


# -- decoding -----------------------------------------------------------------------------------
#
