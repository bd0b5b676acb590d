"""Avro in the Confluent wire format: byte 0, the 4-byte big-endian schema id, then Avro binary.

`Encoder` is built once per schema and called per record; `Decoder` looks writer schemas up by id
in a `SchemaSource` once and caches them, so the hot path is one dict get plus fastavro. Both raise
`SerdeError` subclasses whose messages never carry record content; they interoperate with
confluent-kafka's `AvroSerializer` / `AvroDeserializer` in both directions.

A `SchemaSource` registers schemas under subjects and answers look-ups by id: `RegistrySchemas`
over a Confluent-compatible registry (what the product uses), `LocalSchemas` in this process
(offline work such as replays, and the router's unit tests).
"""

from __future__ import annotations

import json
import struct
import threading
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Protocol

import avro.schema as avro_schema
from confluent_kafka.schema_registry import Schema, SchemaReference, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.validation import validate

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
    registry_unavailable,
)
from backbone.events.encoder import compile_encoder
from backbone.registry.compatibility import LEVELS, incompatibilities, self_contained
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

    Writer schemas are looked up in the schema source once per id and cached; unknown ids are not
    cached, so a schema registered later is found on the next call.
    """

    __slots__ = ("source", "_schemas")

    def __init__(self, source: SchemaSource | SchemaRegistryClient) -> None:
        self.source = schema_source(source)
        self._schemas: dict[int, Any] = {}

    @property
    def registry(self) -> SchemaSource:
        """The schema source (its older name); assigning a `SchemaRegistryClient` wraps it."""
        return self.source

    @registry.setter
    def registry(self, source: SchemaSource | SchemaRegistryClient) -> None:
        self.source = schema_source(source)

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
        """The parsed writer schema for `schema_id` (looked up once, then cached)."""
        parsed = self._schemas.get(schema_id)
        if parsed is not None:
            return parsed
        avro = self.source.schema(schema_id)
        try:
            parsed = parse_schema(avro)
        except Exception as exc:  # noqa: BLE001
            raise SerdeError(f"schema id {schema_id} is not a valid Avro schema") from exc
        self._schemas[schema_id] = parsed
        return parsed


class SchemaSource(Protocol):
    """Where writer schemas live. Errors: `UnknownSchemaId` for an id it does not know,
    `SchemaIncompatible` for a change the subject's level refuses, `RegistryUnavailable` when it
    does not answer (retry later: never a reason to dead-letter), `RegistryError` otherwise."""

    def register(self, subject: str, avro: dict[str, Any]) -> int:
        """Register `avro` under `subject` and return its global schema id (idempotent)."""
        ...

    def set_compatibility(self, subject: str, level: str) -> None:
        """Set the compatibility level (`BACKWARD`, `NONE`, ...) of one subject."""
        ...

    def schema(self, schema_id: int) -> dict[str, Any]:
        """The Avro schema (its JSON document) registered with `schema_id`."""
        ...


def schema_source(source: SchemaSource | SchemaRegistryClient) -> SchemaSource:
    """`source` as a `SchemaSource` (a `SchemaRegistryClient` is wrapped in `RegistrySchemas`)."""
    return RegistrySchemas(source) if isinstance(source, SchemaRegistryClient) else source


class RegistrySchemas:
    """A Confluent-compatible schema registry as a `SchemaSource`, with the backbone's errors."""

    __slots__ = ("client",)

    def __init__(self, client: SchemaRegistryClient) -> None:
        self.client = client

    @property
    def url(self) -> str:
        try:
            return ",".join(self.client._rest_client.base_urls)  # noqa: SLF001 - for error messages only
        except AttributeError:
            return "the schema registry"

    def _unavailable(self, exc: BaseException) -> RegistryUnavailable:
        return registry_unavailable(self.url, type(exc).__name__)

    def register(self, subject: str, avro: dict[str, Any], references: list[SchemaReference] | None = None) -> int:
        """Register `avro` under `subject`; `references` name the subjects that define the named
        types it uses without defining them."""
        try:
            return self.client.register_schema(subject, Schema(json.dumps(avro), "AVRO", references or []))
        except SchemaRegistryError as exc:
            if exc.http_status_code == 409:
                raise SchemaIncompatible(
                    f"schema for subject {subject} is incompatible with its registered versions: {exc.error_message}",
                    exc.error_code,
                ) from exc
            raise RegistryError(f"schema registry refused subject {subject}: {exc.error_message}", exc.error_code) from exc
        except Exception as exc:  # noqa: BLE001 - transport errors (httpx)
            raise self._unavailable(exc) from exc

    def set_compatibility(self, subject: str, level: str) -> None:
        try:
            self.client.set_compatibility(subject_name=subject, level=level)
        except SchemaRegistryError as exc:
            raise RegistryError(
                f"schema registry refused level {level} for subject {subject}: {exc.error_message}", exc.error_code
            ) from exc
        except Exception as exc:  # noqa: BLE001 - transport errors (httpx)
            raise self._unavailable(exc) from exc

    def schema(self, schema_id: int) -> dict[str, Any]:
        try:
            schema = self.client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.error_code == _SCHEMA_NOT_FOUND or exc.http_status_code == 404:
                raise UnknownSchemaId(f"schema id {schema_id} is not in the schema registry") from exc
            raise RegistryError(
                f"schema registry refused schema id {schema_id}: {exc.error_message}", exc.error_code
            ) from exc
        except Exception as exc:  # noqa: BLE001 - transport errors (httpx) while fetching
            raise self._unavailable(exc) from exc
        if schema.schema_type not in (None, "AVRO"):
            raise SerdeError(f"schema id {schema_id} is a {schema.schema_type} schema, not Avro")
        try:
            if not schema.references:
                return json.loads(schema.schema_str)
            # Named types it takes from other subjects are defined inline, so fastavro and the
            # generated decoder read it as they read any self-contained schema.
            resolved = self_contained(schema.schema_str, self._referenced(schema.references, set()))
        except ValueError as exc:
            raise SerdeError(f"schema id {schema_id} from the registry is not JSON") from exc
        except Exception as exc:  # noqa: BLE001 - avro's SchemaParseException and friends
            raise SerdeError(f"schema id {schema_id} does not parse with its references ({type(exc).__name__})") from exc
        if not isinstance(resolved, dict):
            raise SerdeError(f"schema id {schema_id} is not a record schema")
        return resolved

    def _referenced(self, references: list[Any], seen: set[tuple[str, int]]) -> list[str]:
        """The texts of the schemas `references` name, directly or not, dependencies first, each once."""
        texts: list[str] = []
        for reference in references:
            where = (reference.subject, reference.version)
            if where in seen:
                continue
            seen.add(where)
            try:
                registered = self.client.get_version(reference.subject, reference.version, deleted=True)
            except SchemaRegistryError as exc:
                raise RegistryError(
                    f"schema registry refused reference {reference.subject} version {reference.version}: {exc.error_message}",
                    exc.error_code,
                ) from exc
            except Exception as exc:  # noqa: BLE001 - transport errors (httpx) while fetching
                raise self._unavailable(exc) from exc
            texts += self._referenced(registered.schema.references or [], seen)
            texts.append(registered.schema.schema_str)
        return texts


class LocalSchemas:
    """Schemas kept in this process, with a registry's rules: ids from 1 in registration order, the
    same schema (JSON equal after sorting keys) always the same id under every subject, and each
    subject's compatibility level (default BACKWARD) checked on registration.

    Nothing is persisted: for offline work (replays, tools, tests of the processor's pure parts).
    """

    def __init__(self, default_level: str = "BACKWARD") -> None:
        self.default_level = _level(default_level)
        self._ids: dict[str, int] = {}  # identity -> id
        self._schemas: dict[int, dict[str, Any]] = {}
        self._versions: dict[str, list[int]] = {}  # subject -> schema ids, oldest first
        self._levels: dict[str, str] = {}
        self._lock = threading.Lock()

    def register(self, subject: str, avro: dict[str, Any]) -> int:
        try:
            parse_schema(json.loads(json.dumps(avro)))
        except Exception as exc:  # noqa: BLE001 - fastavro raises several types for a bad schema
            raise RegistryError(f"schema for subject {subject} is not a valid Avro schema ({type(exc).__name__})", 42201) from exc
        identity = json.dumps(avro, sort_keys=True, separators=(",", ":"))
        with self._lock:
            versions = self._versions.setdefault(subject, [])
            known = self._ids.get(identity)
            if known is not None and known in versions:
                return known
            reasons = self._incompatibilities(subject, avro, versions)
            if reasons:
                raise SchemaIncompatible(
                    f"schema for subject {subject} is incompatible with its registered versions: {'; '.join(reasons)}", 409
                )
            if known is None:
                known = self._ids[identity] = len(self._ids) + 1
                self._schemas[known] = json.loads(identity)
            versions.append(known)
            return known

    def _incompatibilities(self, subject: str, avro: dict[str, Any], versions: list[int]) -> list[str]:
        level = self._levels.get(subject, self.default_level)
        if level == "NONE" or not versions:
            return []
        # The same checker as the backbone's registry, so both refuse the same changes.
        existing = [(number, avro_schema.parse(json.dumps(self._schemas[schema_id])))
                    for number, schema_id in enumerate(versions, start=1)]
        return incompatibilities(avro_schema.parse(json.dumps(avro)), existing, level)

    def set_compatibility(self, subject: str, level: str) -> None:
        with self._lock:
            self._levels[subject] = _level(level)

    def schema(self, schema_id: int) -> dict[str, Any]:
        with self._lock:
            found = self._schemas.get(schema_id)
        if found is None:
            raise UnknownSchemaId(f"schema id {schema_id} is not among the {len(self._schemas)} local schemas")
        return json.loads(json.dumps(found))

    def subjects(self) -> list[str]:
        """Every subject with at least one version, sorted."""
        with self._lock:
            return sorted(subject for subject, versions in self._versions.items() if versions)

    def versions(self, subject: str) -> list[int]:
        """The schema ids of `subject`'s versions, oldest first (empty when it has none)."""
        with self._lock:
            return list(self._versions.get(subject, []))


def _level(level: str) -> str:
    if level.upper() not in LEVELS:
        raise RegistryError(f"unknown compatibility level {level!r}; one of {', '.join(LEVELS)}", 42203)
    return level.upper()


def registry_client(settings: Settings) -> SchemaRegistryClient:
    """A schema registry client for `settings.schema_registry_url` (fails fast when it is down),
    sending the configured registry user with HTTP Basic (`basic.auth.user.info`)."""
    config: dict[str, Any] = {"url": settings.schema_registry_url, "timeout": 10, "max.retries": 1, "retries.wait.ms": 200}
    credentials = settings.schema_registry_credentials()
    if credentials is not None:
        config["basic.auth.user.info"] = ":".join(credentials)
    if settings.schema_registry_ssl_ca_location is not None:
        config["ssl.ca.location"] = str(settings.schema_registry_ssl_ca_location)
    return SchemaRegistryClient(config)


def register(source: SchemaSource | SchemaRegistryClient, subject: str, avro: dict) -> int:
    """Register `avro` under `subject` and return its global schema id (idempotent)."""
    return schema_source(source).register(subject, avro)


def encoder_for(source: SchemaSource | SchemaRegistryClient, subject: str, avro: dict) -> Encoder:
    """Register `avro` under `subject` and build the encoder for it."""
    return Encoder(register(source, subject, avro), parse_schema(json.loads(json.dumps(avro))), avro)
