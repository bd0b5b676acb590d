"""Avro in the Confluent wire format: byte 0, the 4-byte big-endian schema id, then Avro binary.

`Encoder` is built once per schema and called per record; `Decoder` looks writer schemas up by id
through a `SchemaRegistryClient` once and caches them, so the hot path is one dict get plus
fastavro. Both raise `SerdeError` subclasses whose messages never carry record content; they
interoperate with confluent-kafka's `AvroSerializer` / `AvroDeserializer` in both directions.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.validation import validate

from backbone.avro_codegen import compile_encoder
from backbone.errors import (
    BadMagicByte,
    CorruptMessage,
    EncodeError,
    RegistryError,
    RegistryUnavailable,
    SchemaIncompatible,
    SerdeError,
    TruncatedMessage,
    UnknownSchemaId,
)
from backbone.settings import Settings

MAGIC = 0
HEADER_SIZE = 5
_HEADER = struct.Struct(">BI")  # magic byte, schema id
_SCHEMA_NOT_FOUND = 40403


@dataclass(slots=True, frozen=True)
class Decoded:
    """A decoded event: the writer's schema id and the record as fastavro returns it."""

    schema_id: int
    record: dict


def _schema_name(parsed_schema: Any) -> str:
    return parsed_schema.get("name", "?") if isinstance(parsed_schema, dict) else str(parsed_schema)


def _bad_field(parsed_schema: Any, record: Any) -> str:
    """Name of the first field that does not fit (slow path, only after a failed write)."""
    try:
        validate(record, parsed_schema, raise_errors=True)
    except Exception as exc:  # noqa: BLE001 - fastavro's ValidationError carries the field path
        errors = getattr(exc, "errors", None) or []
        for error in errors:
            field = getattr(error, "field", "")
            if field:
                return field
        return "<record>"
    return "<record>"


class Encoder:
    """Encodes records with one schema into the Confluent wire format.

    >>> encode = Encoder(schema_id, catalog.event("welfare.benefit_claimed").parsed)
    >>> value = encode(record)
    """

    __slots__ = ("schema_id", "parsed_schema", "_header", "_compiled")

    def __init__(self, schema_id: int, parsed_schema: Any, avro: dict | None = None) -> None:
        if not 0 <= schema_id < 2**32:
            raise SerdeError(f"schema id {schema_id} does not fit the 4-byte wire-format header")
        self.schema_id = schema_id
        self.parsed_schema = parsed_schema
        self._header = _HEADER.pack(MAGIC, schema_id)
        # Given the schema's JSON, a generated straight-line encoder writes the same bytes several
        # times faster; it refuses anything doubtful, which then takes the fastavro path below.
        self._compiled = compile_encoder(avro, schema_id) if avro is not None else None

    def __call__(self, record: dict) -> bytes:
        compiled = self._compiled
        if compiled is not None:
            try:
                return compiled(record)
            except Exception:  # noqa: BLE001 - strict fast path; fastavro decides and reports
                pass
        buffer = BytesIO()
        buffer.write(self._header)
        try:
            schemaless_writer(buffer, self.parsed_schema, record)
        except Exception as exc:  # fastavro raises TypeError, ValueError, AttributeError, OverflowError ...
            field = _bad_field(self.parsed_schema, record)
            raise EncodeError(
                f"record does not fit schema {_schema_name(self.parsed_schema)} (id {self.schema_id}): field {field}"
            ) from exc
        return buffer.getvalue()


class Decoder:
    """Decodes Confluent wire-format bytes with the writer schema named in the header.

    Writer schemas are fetched from the registry once per id and cached; unknown ids are not
    cached, so a schema registered later is found on the next call.
    """

    __slots__ = ("registry", "_schemas")

    def __init__(self, registry: SchemaRegistryClient) -> None:
        self.registry = registry
        self._schemas: dict[int, Any] = {}

    def __call__(self, data: bytes) -> Decoded:
        if len(data) < HEADER_SIZE:
            raise TruncatedMessage(f"message of {len(data)} bytes is shorter than the {HEADER_SIZE}-byte header")
        magic, schema_id = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise BadMagicByte(f"first byte is {magic}, not the wire-format magic byte {MAGIC}")
        parsed = self._schemas.get(schema_id)
        if parsed is None:
            parsed = self.schema(schema_id)
        buffer = BytesIO(data)
        buffer.seek(HEADER_SIZE)
        try:
            record = schemaless_reader(buffer, parsed, None)
        except EOFError as exc:
            raise TruncatedMessage(
                f"message of {len(data)} bytes ends inside the Avro body (schema id {schema_id})"
            ) from exc
        except Exception as exc:  # noqa: BLE001 - bad bytes surface as many types in fastavro
            raise CorruptMessage(
                f"Avro body of {len(data)} bytes does not decode with schema id {schema_id} ({type(exc).__name__})"
            ) from exc
        if buffer.tell() != len(data):
            raise CorruptMessage(
                f"{len(data) - buffer.tell()} trailing bytes after the Avro record (schema id {schema_id})"
            )
        return Decoded(schema_id, record)

    def schema(self, schema_id: int) -> Any:
        """The parsed writer schema for `schema_id` (fetched once, then cached)."""
        parsed = self._schemas.get(schema_id)
        if parsed is not None:
            return parsed
        try:
            schema = self.registry.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.error_code == _SCHEMA_NOT_FOUND or exc.http_status_code == 404:
                raise UnknownSchemaId(f"schema id {schema_id} is not in the schema registry") from exc
            raise RegistryError(
                f"schema registry refused schema id {schema_id}: {exc.error_message}", exc.error_code
            ) from exc
        except Exception as exc:  # noqa: BLE001 - transport errors (httpx) while fetching
            raise _unavailable(self.registry, exc) from exc
        if schema.schema_type not in (None, "AVRO"):
            raise SerdeError(f"schema id {schema_id} is a {schema.schema_type} schema, not Avro")
        try:
            parsed = parse_schema(json.loads(schema.schema_str))
        except Exception as exc:  # noqa: BLE001
            raise SerdeError(f"schema id {schema_id} from the registry is not a valid Avro schema") from exc
        self._schemas[schema_id] = parsed
        return parsed


def _registry_url(client: SchemaRegistryClient) -> str:
    try:
        return ",".join(client._rest_client.base_urls)  # noqa: SLF001 - for the error message only
    except AttributeError:
        return "the schema registry"


def _unavailable(client: SchemaRegistryClient, exc: BaseException) -> RegistryUnavailable:
    return RegistryUnavailable(
        f"schema registry at {_registry_url(client)} did not answer ({type(exc).__name__}); "
        "start the embedded stack with `backbone up` or set BACKBONE_SCHEMA_REGISTRY_URL"
    )


def registry_client(settings: Settings) -> SchemaRegistryClient:
    """A schema registry client for `settings.schema_registry_url` (fails fast when it is down)."""
    return SchemaRegistryClient(
        {"url": settings.schema_registry_url, "timeout": 10, "max.retries": 1, "retries.wait.ms": 200}
    )


def register(client: SchemaRegistryClient, subject: str, avro: dict) -> int:
    """Register `avro` under `subject` and return its global schema id (idempotent)."""
    try:
        return client.register_schema(subject, Schema(json.dumps(avro), "AVRO"))
    except SchemaRegistryError as exc:
        if exc.http_status_code == 409:
            raise SchemaIncompatible(
                f"schema for subject {subject} is incompatible with its registered versions: {exc.error_message}",
                exc.error_code,
            ) from exc
        raise RegistryError(f"schema registry refused subject {subject}: {exc.error_message}", exc.error_code) from exc
    except Exception as exc:  # noqa: BLE001 - transport errors
        raise _unavailable(client, exc) from exc


def encoder_for(client: SchemaRegistryClient, subject: str, avro: dict) -> Encoder:
    """Register `avro` under `subject` and build the encoder for it."""
    return Encoder(register(client, subject, avro), parse_schema(json.loads(json.dumps(avro))), avro)
