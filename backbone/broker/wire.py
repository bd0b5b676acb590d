"""The Kafka wire protocol through `kio`'s typed messages: the request header read by hand (four
fixed fields and tagged fields), the body by kio's reader for that API and version; responses are
built from plain dicts into the version's kio dataclass (`build`: fields a version lacks are left
out, fields it has that the dict lacks get their zero), then written by kio's writer.

Which versions the broker answers (`SUPPORTED`) is the intersection of what kio has and what the
handlers were written for: no topic ids (Fetch < 13, Metadata < 10 keep names), the classic
consumer-group protocol, and the versions before each API became "flexible" (librdkafka 2.16 sends
tagged fields in Metadata v9 that kio's reader refuses), but for ApiVersions v3 and DescribeCluster,
which only exist so.
"""

from __future__ import annotations

import datetime
import io
import struct
import uuid
from dataclasses import MISSING, fields
from functools import cache
from typing import Any

from kio.index import load_request_schema, load_response_schema
from kio.schema.errors import ErrorCode
from kio.serial import entity_reader, entity_writer
from kio.serial._introspect import EntityField, EntityTupleField, PrimitiveTupleField, classify_field

from backbone.broker.log import uvarint

# api key -> (min, max) version the broker answers
SUPPORTED: dict[int, tuple[int, int]] = {
    0: (3, 8),  # Produce
    1: (4, 11),  # Fetch
    2: (1, 5),  # ListOffsets
    3: (1, 8),  # Metadata
    8: (2, 7),  # OffsetCommit
    9: (1, 5),  # OffsetFetch
    10: (0, 2),  # FindCoordinator
    11: (0, 5),  # JoinGroup
    12: (0, 3),  # Heartbeat
    13: (0, 3),  # LeaveGroup
    14: (0, 3),  # SyncGroup
    15: (0, 4),  # DescribeGroups
    16: (0, 2),  # ListGroups
    18: (0, 3),  # ApiVersions
    19: (2, 4),  # CreateTopics
    20: (1, 3),  # DeleteTopics
    21: (0, 1),  # DeleteRecords
    22: (0, 1),  # InitProducerId
    32: (1, 3),  # DescribeConfigs
    33: (0, 1),  # AlterConfigs
    37: (0, 1),  # CreatePartitions
    44: (0, 0),  # IncrementalAlterConfigs
    60: (0, 0),  # DescribeCluster
}
API_VERSIONS = 18


class WireError(Exception):
    """A request the broker cannot read: the connection is closed."""




def read_request(frame: bytes) -> tuple[int, int, int, Any]:
    """(api key, version, correlation id, request entity or None for an unsupported version)."""
    if len(frame) < 8:
        raise WireError("short request")
    api_key, version, correlation = struct.unpack_from(">hhi", frame, 0)
    span = SUPPORTED.get(api_key)
    if span is None or not span[0] <= version <= span[1]:
        return api_key, version, correlation, None
    schema = load_request_schema(api_key, version)
    (client_length,) = struct.unpack_from(">h", frame, 8)
    position = 10 + max(client_length, 0)
    if schema.__header_schema__.__flexible__:
        count, position = uvarint(frame, position)
        for _ in range(count):
            _, position = uvarint(frame, position)
            size, position = uvarint(frame, position)
            position += size
    request, _ = _reader(schema)(memoryview(frame), position)
    return api_key, version, correlation, request


@cache
def _reader(schema: type) -> Any:
    return entity_reader(schema)


@cache
def _writer(schema: type) -> Any:
    return entity_writer(schema)


@cache
def _fields(cls: type) -> tuple[tuple[str, Any, Any, bool], ...]:
    """(name, kind, nested class or kafka type, has default) of each field of a kio dataclass."""
    out = []
    for f in fields(cls):
        kind = classify_field(f)
        has_default = f.default is not MISSING or f.default_factory is not MISSING
        if isinstance(kind, EntityTupleField | EntityField):
            out.append((f.name, type(kind), kind.type_, has_default))
        elif isinstance(kind, PrimitiveTupleField):
            out.append((f.name, PrimitiveTupleField, f.metadata.get("kafka_type"), has_default))
        else:
            nullable = "None" in str(f.type)
            out.append((f.name, None, (f.metadata.get("kafka_type"), nullable), has_default))
    return tuple(out)


_ZERO = {"string": "", "bool": False, "records": None, "uuid": uuid.UUID(int=0), "bytes": b""}


def _primitive(kafka_type: str, value: Any) -> Any:
    if kafka_type == "error_code":
        return ErrorCode(int(value))
    if kafka_type in {"timedelta_i32", "timedelta_i64"} and not isinstance(value, datetime.timedelta):
        return datetime.timedelta(milliseconds=int(value))
    if kafka_type.startswith("datetime") and isinstance(value, int):
        return None if value < 0 else datetime.datetime.fromtimestamp(value / 1000, tz=datetime.UTC)
    return value


def build(cls: type, data: dict[str, Any]) -> Any:
    """The kio entity `cls` from a dict of its fields (nested entities as dicts or lists of dicts)."""
    values: dict[str, Any] = {}
    for name, kind, inner, has_default in _fields(cls):
        if name not in data:
            if has_default:
                continue
            if kind is EntityTupleField or kind is PrimitiveTupleField:
                values[name] = ()
            elif kind is EntityField:
                values[name] = None
            else:
                kafka_type, nullable = inner
                values[name] = None if nullable and kafka_type in {"string", "records", "bytes"} else _primitive(
                    kafka_type, _ZERO.get(kafka_type, 0))
            continue
        value = data[name]
        if kind is EntityTupleField:
            values[name] = tuple(build(inner, item) for item in value)
        elif kind is EntityField:
            values[name] = None if value is None else build(inner, value)
        elif kind is PrimitiveTupleField:
            values[name] = tuple(value)
        else:
            values[name] = _primitive(inner[0], value)
    return cls(**values)


def encode_response(api_key: int, version: int, correlation: int, body: dict[str, Any]) -> bytes:
    """The framed response (size, header, body) for `body` at this API's `version`."""
    schema = load_response_schema(api_key, version)
    buffer = io.BytesIO()
    buffer.write(b"\0\0\0\0")
    buffer.write(struct.pack(">i", correlation))
    if schema.__header_schema__.__flexible__:
        buffer.write(b"\0")  # no tagged fields
    _writer(schema)(buffer, build(schema, body))
    frame = buffer.getbuffer()
    struct.pack_into(">i", frame, 0, len(frame) - 4)
    return bytes(frame)


def api_versions_body(error: int = 0) -> dict[str, Any]:
    return {"error_code": error, "throttle_time": 0,
            "api_keys": [{"api_key": k, "min_version": lo, "max_version": hi} for k, (lo, hi) in sorted(SUPPORTED.items())]}


def unsupported_api_versions(correlation: int) -> bytes:
    """What a client that asked ApiVersions at a version the broker lacks gets: the v0 answer with
    UNSUPPORTED_VERSION and the list, so it retries at one the broker has."""
    return encode_response(API_VERSIONS, 0, correlation, api_versions_body(ErrorCode.unsupported_version))


def ms(value: Any) -> int:
    """Milliseconds of a kio timedelta field (or an int)."""
    if isinstance(value, datetime.timedelta):
        return int(value.total_seconds() * 1000)
    return int(value)
